"""Training pieces shared by the `sft` and `dpo` stages: the LoRA adapter, the precision, resume.

Resume: a stage trains in a working folder keyed by a hash of everything that decides the run
(its params and the bytes of its inputs), under `.tutorloop-cache/train/` (or
$TUTORLOOP_TRAIN_DIR), saving a Trainer checkpoint every `save_steps` updates. A stage killed
mid-training (SIGTERM, OOM, a reboot) finds its folder on the next `dvc repro` and resumes from
the last checkpoint — model, optimizer, scheduler and RNG states — instead of starting over; a
changed knob or input gives a new key, so nothing stale is ever resumed. The folder is removed
once the merged model is saved.

A library module, not a stage: `dpo` used to import these from the `sft` stage, so editing the SFT
stage re-ran every preference round.

    python -m components.training        # print the LoRA configs params.yaml gives sft and dpo
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from components.config import Lora


def lora_config(cfg: Lora):
    from peft import LoraConfig

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")


def trainer_precision(device) -> dict:
    """bf16 autocast everywhere we can: on CPU TRL needs use_cpu=True for it (~1.5x fp32 here)."""
    if device.type == "cuda":
        import torch
        return {"bf16": torch.cuda.is_bf16_supported()}
    return {"use_cpu": True, "bf16": True}


def _digest(h, part) -> None:
    if isinstance(part, Path):
        files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
        for f in files:
            h.update(str(f.relative_to(part) if part.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    else:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())


def work_dir(stage: str, *parts) -> Path:
    """The resumable working folder of a training run decided by `parts` (params dicts, input
    files or folders, hashed by content)."""
    h = hashlib.sha256()
    for part in parts:
        _digest(h, part)
    root = Path(os.environ.get("TUTORLOOP_TRAIN_DIR", ".tutorloop-cache/train"))
    return root / f"{stage}-{h.hexdigest()[:16]}"


def checkpointing(save_steps: int) -> dict:
    """Trainer arguments: keep the newest checkpoint every `save_steps` updates (0 = never)."""
    if not save_steps:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1}


def last_checkpoint(work: Path) -> str | None:
    """The checkpoint a killed run left in `work`, to resume from; None = start fresh."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(work)) if work.is_dir() else None


if __name__ == "__main__":
    from components.config import load_params

    params = load_params()
    print("sft:", lora_config(params.sft.lora))
    print("dpo:", lora_config(params.dpo.lora))
