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
from pathlib import Path

from tutorloop.data.digest import digest


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
