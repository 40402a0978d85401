"""Training throughput: the SFT stage's trainer vs a raw PyTorch LoRA loop on the same batches, one run.

The stage trains through TRL's SFTTrainer (tutorloop/train/sft.py: the same `build_trainer`
the stage calls, with its collator, precision and plain-loss override). What that machinery costs
is measured here against the least a LoRA step can be: the same model, the same LoRA config, the
same batches in the same order, `model(**batch).loss`, backward, AdamW — at the precision `auto`
resolves to on this machine (bf16 autocast only where the CPU computes bf16 natively:
tutorloop/hardware.py). The first line names the machine: figures are per CPU kind. Tokens are
the non-padding tokens of the timed steps (the first `--warmup` steps of each side are not timed).

    python benchmarks/training.py [models/base] [--steps 6] [--batch 8] [--length 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tutorloop import hardware, modeling  # noqa: E402
from tutorloop.config import load_params  # noqa: E402
from tutorloop.teachers import ProceduralTeacher  # noqa: E402
from tutorloop.train import sft  # noqa: E402
from tutorloop.train.lora import lora_config  # noqa: E402
from tutorloop.train.precision import train_dtype  # noqa: E402


def stage_params(path: Path, batch: int, length: int):
    """The project's params with the SFT batch fixed (no auto, no accumulation, no checkpoints)."""
    params = load_params(path)
    cfg = params.sft.model_copy(update={"batch_size": batch, "grad_accum": 1, "max_length": length,
                                        "save_steps": 0, "logging_steps": 10_000, "epochs": 100})
    return params.model_copy(update={"sft": cfg})


def time_trainer(trainer, steps: int, warmup: int) -> float:
    """Seconds of the trainer's steps after `warmup` (a callback stamps each step's end)."""
    from transformers import TrainerCallback

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    trainer.add_callback(Stamp())
    trainer.args.max_steps = warmup + steps
    trainer.train()
    return stamps[-1] - stamps[warmup - 1]


def time_raw_loop(model, batches: list[dict], lr: float, amp: str | None, warmup: int) -> float:
    """Seconds of a bare LoRA loop's steps after `warmup`: forward, backward, AdamW."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr)
    model.train()
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/base")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the LoRA and learning rate used")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    params = stage_params(args.params, args.batch, args.length)
    # the stage's runtime, on the CPU at --precision: resolved once, as components/sft.py does
    runtime = hardware.resolve_runtime(params.runtime.model_copy(update={"device": "cpu", "precision": args.precision}))
    device, chosen = runtime.torch_device, runtime.precision
    machine = f"{hardware.cpu_name()}, torch capability {hardware.cpu_capability()}, {chosen.dtype} ({chosen.reason})"
    print(f"machine: {machine}")
    n = (args.warmup + args.steps) * args.batch
    rows = [{"question": p["question"], "solution": p["solution"]} for p in ProceduralTeacher().problems(n, seed=7)]
    params = params.model_copy(update={"runtime": params.runtime.model_copy(update={"precision": chosen.dtype})})

    model, tok = modeling.load(args.model, dtype=train_dtype(runtime), device=device)
    with tempfile.TemporaryDirectory() as work:
        trainer = sft.build_trainer(params, model, tok, rows, Path(work), batch=(args.batch, 1), runtime=runtime)
        # the batches the trainer will see, in its order (its sampler is seeded): the raw loop's input
        batches = [b for _, b in zip(range(args.warmup + args.steps), trainer.get_train_dataloader())]
        tokens = sum(int(b["attention_mask"][:, :].sum()) for b in batches[args.warmup:])
        trainer_s = time_trainer(trainer, args.steps, args.warmup)

    from peft import get_peft_model

    raw, _ = modeling.load(args.model, dtype=train_dtype(runtime), device=device)
    raw = get_peft_model(raw, lora_config(params.sft.lora))
    keep = ("input_ids", "attention_mask", "labels")
    raw_s = time_raw_loop(raw, [{k: v for k, v in b.items() if k in keep} for b in batches],
                          params.sft.learning_rate, chosen.amp, args.warmup)
    figures = {"trainer_tokens_per_second": tokens / trainer_s, "raw_tokens_per_second": tokens / raw_s,
               "ratio": raw_s / trainer_s, "tokens": tokens, "steps": args.steps, "batch": args.batch,
               "length": args.length, "machine": machine, "precision": chosen.dtype}
    print(f"\nSFT, LoRA r{params.sft.lora.r}, batch {args.batch} x <= {args.length} tokens, {args.steps} timed steps, "
          f"{chosen.dtype}:")
    print(f"  the stage's trainer (TRL SFTTrainer)  {figures['trainer_tokens_per_second']:8.1f} tok/s  ({trainer_s:.1f} s)")
    print(f"  raw PyTorch LoRA loop                 {figures['raw_tokens_per_second']:8.1f} tok/s  ({raw_s:.1f} s)")
    print(f"  ratio trainer / raw                   {figures['ratio']:8.2f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
