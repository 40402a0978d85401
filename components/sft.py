"""Stage `sft`: supervised fine-tuning of the student on the teacher's solutions -> models/round-0.

TRL's SFTTrainer with a LoRA adapter, loss on the solution tokens only, merged into a plain
safetensors checkpoint (tutorloop/train/sft.py). A killed run resumes from its last checkpoint
on the next `dvc repro` (tutorloop/train/resume.py).

    python -m components.sft models/base data/generated/sft.jsonl models/round-0
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.hardware import resolve_runtime
from tutorloop.runtime.stage import Arg, stage
from tutorloop.runtime.tracking import trainer_callback
from tutorloop.train.sft import train_sft


@stage("sft", Arg("base", Path), Arg("train", Path), Arg("out", Path), round_key="0", distributed_training=True,
       logged=lambda params, args: {"sft": params.sft.model_dump(), "prompt": params.prompt.model_dump()})
def main(params, args, log) -> dict:
    # resolved once here (threads, device, precision) and handed down: the library never re-resolves
    return train_sft(params, args.base, args.train, args.out, [trainer_callback(log)],
                     runtime=resolve_runtime(params.runtime))


if __name__ == "__main__":
    main()
