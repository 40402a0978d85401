"""Killed training resumes: a working folder per run, checkpoints in it, the last one found.

Resume: a stage trains in a working folder keyed by a hash of everything that decides the run
(its params and the bytes of its inputs), under `.tutorloop-cache/train/` (or
$TUTORLOOP_TRAIN_DIR), saving a Trainer checkpoint every `save_steps` updates. A stage killed
mid-training (SIGTERM, OOM, a reboot) finds its folder on the next `dvc repro` and resumes from
the last checkpoint — model, optimizer, scheduler and RNG states — instead of starting over; a
changed knob or input gives a new key, so nothing stale is ever resumed. The folder is removed
once the merged model is saved.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tutorloop.data.digest import digest
from tutorloop.hardware import Precision
from tutorloop.train.lora import merge_and_save_full_precision
from tutorloop.train.precision import trainer_precision


def work_dir(stage: str, *parts) -> Path:
    """The resumable working folder of a training run decided by `parts` (params dicts, input
    files or folders, hashed by content)."""
    root = Path(os.environ.get("TUTORLOOP_TRAIN_DIR", ".tutorloop-cache/train"))
    return root / f"{stage}-{digest(*parts, length=16)}"


def checkpointing(save_steps: int) -> dict:
    """Trainer arguments: keep the newest checkpoint every `save_steps` updates (0 = never)."""
    if not save_steps:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1}


def last_checkpoint(work: Path) -> str | None:
    """The checkpoint a killed run left in `work`, to resume from; None = start fresh."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(work)) if work.is_dir() else None


def trainer_args(work: Path, *, learning_rate: float, epochs: float, batch: int, grad_accum: int,
                 warmup_ratio: float, max_length: int, seed: int, logging_steps: int, save_steps: int,
                 device, precision: Precision) -> dict:
    """The TrainingArguments every stage's TRL trainer shares: cosine schedule, seeded data
    order, checkpoints in `work`, the device's precision, no activation checkpointing (~25%
    faster on CPU; activations fit easily), and no reporting (our callback logs to MLflow)."""
    return dict(output_dir=str(work), learning_rate=learning_rate, num_train_epochs=epochs,
                per_device_train_batch_size=batch, gradient_accumulation_steps=grad_accum,
                warmup_steps=warmup_ratio, lr_scheduler_type="cosine", max_length=max_length,
                seed=seed, data_seed=seed, logging_steps=logging_steps, report_to="none",
                **checkpointing(save_steps), activation_checkpointing=False, dataset_num_proc=1,
                **trainer_precision(device, precision))


@dataclass(frozen=True)
class Trained:
    result: object            # the trainer's TrainOutput (training_loss, ...)
    seconds: float            # wall time of this attempt's training
    resumed_from_step: int    # 0 = started fresh


def train_and_merge(trainer, work: Path, tok, out: Path, base: Path) -> Trained:
    """Train, resuming from the checkpoint a killed earlier attempt of this very run left in
    `work`; merge the adapter (into `base`'s fp32 weights where training ran in a half dtype),
    save the checkpoint to `out`, then remove `work` (kept on failure: the next attempt resumes)."""
    resume = last_checkpoint(work)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    merge_and_save_full_precision(trainer.model, tok, out, base)
    shutil.rmtree(work, ignore_errors=True)
    return Trained(result, seconds, int(resume.rsplit("-", 1)[1]) if resume else 0)
