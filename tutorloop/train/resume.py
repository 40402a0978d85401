"""Killed training resumes: a working folder per run, checkpoints in it, the last one found.

Resume: a stage trains in a working folder keyed by a hash of everything that decides the run
(its params and the bytes of its inputs), under `.tutorloop-cache/train/` (or
$TUTORLOOP_TRAIN_DIR), saving a Trainer checkpoint every `save_steps` updates. A stage killed
mid-training (SIGTERM, OOM, a reboot) finds its folder on the next `dvc repro` and resumes from
the last *complete* checkpoint — model, optimizer, scheduler and RNG states — instead of starting
over; a changed knob or input gives a new key, so nothing stale is ever resumed. A checkpoint is
complete once a marker file is renamed into it after the Trainer saved everything; one killed
mid-save has no marker and is removed, so a retry never loads half-written weights or a
truncated optimizer file. The folder is removed
once the merged model is saved.

Under `accelerate launch` (tutorloop/runtime/distributed.py) every rank finds the same folder (its
key holds the process count: a checkpoint's data order and per-rank RNG states belong to one
world size) and resumes the same last complete checkpoint; only the main rank marks, rotates
and removes checkpoints (after a barrier: every rank's part is on disk) and merges the adapter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tutorloop.data.digest import digest
from tutorloop.hardware import ResolvedRuntime
from tutorloop.runtime.distributed import barrier, is_main, world_size
from tutorloop.train.lora import merge_and_save_full_precision, merge_saved_adapter
from tutorloop.train.precision import trainer_precision


def work_dir(stage: str, *parts, code: Path | None = None) -> Path:
    """The resumable working folder of a training run decided by `parts` (params dicts, input
    files or folders, hashed by content) and by the library code `code` (a module file: the
    trainer's) computes with: a fix to that code starts afresh instead of resuming a checkpoint
    the old code wrote."""
    root = Path(os.environ.get("TUTORLOOP_TRAIN_DIR", ".tutorloop-cache/train"))
    world = [f"processes={world_size()}"] if world_size() > 1 else []   # one process: the key as before
    return root / f"{stage}-{digest(*parts, *world, *([code_digest(code)] if code else []), length=16)}"


def code_digest(start: Path, root: Path | None = None) -> str:
    """A content hash of every library file `start` computes with (its imports, transitively:
    the set dvc.yaml's deps list for the stage, tutorloop/runtime/deps.py); `root`: the folder
    holding the package (this one's by default)."""
    from tutorloop.runtime.deps import computes_with

    root = (root or Path(__file__).resolve().parents[2]).resolve()
    start = Path(start).resolve()
    return digest(*(root / f for f in sorted(computes_with(root, start) | {start.relative_to(root).as_posix()})),
                  length=16)


COMPLETE = "tutorloop-complete.json"   # written last, atomically, into a checkpoint fully saved
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpointing(save_steps: int) -> dict:
    """Trainer arguments: a checkpoint every `save_steps` updates (0 = never). No save_total_limit:
    the Trainer would delete the previous checkpoint before ours is marked complete, and a kill
    in between would leave nothing to resume from; `CompleteCheckpoints` rotates instead."""
    if not save_steps:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": save_steps}


def _checkpoints(work: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in work.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def mark_complete(checkpoint: Path, step: int) -> None:
    """Mark a fully written checkpoint: its files flushed to disk, then the marker written to a
    temporary name and renamed (a kill leaves either no marker or a whole one)."""
    for f in checkpoint.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    tmp = checkpoint / (COMPLETE + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({"step": step, "files": sorted(f.name for f in checkpoint.iterdir() if f.name != tmp.name)}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, checkpoint / COMPLETE)


def complete_checkpoints_callback(work: Path):
    """A TrainerCallback that marks each checkpoint complete once the Trainer has saved all of it
    (weights, optimizer, scheduler, RNG, state: `on_save` comes after), then removes the older ones."""
    from transformers import TrainerCallback

    class CompleteCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            barrier()   # every rank has written its part (its RNG state, its shard)
            newest = work / f"checkpoint-{state.global_step}"
            if is_main() and newest.is_dir():
                mark_complete(newest, state.global_step)
                for step, path in _checkpoints(work):
                    if step != state.global_step:
                        shutil.rmtree(path, ignore_errors=True)

    return CompleteCheckpoints()


def last_checkpoint(work: Path) -> str | None:
    """The newest *complete* checkpoint a killed run left in `work`, to resume from; None = start
    fresh. A checkpoint without its marker (killed mid-save) is removed, never resumed."""
    if not work.is_dir():
        return None
    found = _checkpoints(work)
    complete = [(step, path) for step, path in found if (path / COMPLETE).is_file()]
    best = complete[-1][1] if complete else None
    for _, path in found:
        if is_main() and path != best and not (path / COMPLETE).is_file():
            shutil.rmtree(path, ignore_errors=True)
    return str(best) if best else None


def trainer_args(work: Path, *, learning_rate: float, epochs: float, batch: int, grad_accum: int,
                 warmup_ratio: float, max_length: int, seed: int, logging_steps: int, save_steps: int,
                 runtime: ResolvedRuntime) -> dict:
    """The TrainingArguments every stage's TRL trainer shares: cosine schedule, seeded data
    order, checkpoints in `work`, the runtime's precision, no activation checkpointing (~25%
    faster on CPU; activations fit easily), and no reporting (our callback logs to MLflow)."""
    return dict(output_dir=str(work), learning_rate=learning_rate, num_train_epochs=epochs,
                per_device_train_batch_size=batch, gradient_accumulation_steps=grad_accum,
                warmup_steps=warmup_ratio, lr_scheduler_type="cosine", max_length=max_length,
                seed=seed, data_seed=seed, logging_steps=logging_steps, report_to="none",
                **checkpointing(save_steps), activation_checkpointing=False, dataset_num_proc=1,
                **trainer_precision(runtime))


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
    # first, so a callback that stops training in on_save (a test's "kill") finds the save marked
    trainer.callback_handler.callbacks.insert(0, complete_checkpoints_callback(work))
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    if world_size() == 1:
        merge_and_save_full_precision(trainer.model, tok, out, base)
    else:
        # every rank takes part in saving (FSDP / ZeRO-3 gather the adapter's shards); the main
        # rank merges the saved adapter into base's fp32 weights while the others wait
        trainer.save_model(str(work / "adapter"))
        barrier()
        if is_main():   # the others exit meanwhile (torchrun waits for every rank): no barrier to time out
            merge_saved_adapter(work / "adapter", tok, out, base)
    if is_main():
        shutil.rmtree(work, ignore_errors=True)
    return Trained(result, seconds, int(resume.rsplit("-", 1)[1]) if resume else 0)
