"""Supervised fine-tuning of the student on the teacher's solutions, thin over TRL's SFTTrainer.

TRL `SFTTrainer` + a PEFT LoRA adapter on the chat-formatted problems in the prompt/completion
format, so the loss covers the assistant's solution tokens only (TRL's default for that format;
SmolLM2's chat template has no `{% generation %}` markers, so `assistant_only_loss` is not an
option). The adapter is merged and the result saved as a plain safetensors checkpoint, which every
later stage loads with `from_pretrained`.

Per device (tutorloop/train/precision.py): on CPU, fp32 weights (under bf16 autocast only where
the CPU computes bf16 natively: `runtime.precision`) and the plain-loss override below (a CPU speed trick); on CUDA, the frozen base in bf16 with bf16 mixed
precision, TRL's own loss path, and the adapter merged into the fp32 base. `sft.batch_size: auto`
picks the per-device batch (tutorloop/train/batching.py). Device and precision are the stage's
resolved runtime (`runtime`, tutorloop/hardware.py), never re-resolved here.
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.config import SFT_BATCH_CPU, Params, Prompt, Sft
from tutorloop.data.jsonl import read_jsonl
from tutorloop.hardware import ResolvedRuntime
from tutorloop.modeling import load, messages
from tutorloop.runtime.distributed import world_size
from tutorloop.train.batching import device_batch
from tutorloop.train.lora import lora_config
from tutorloop.train.precision import train_dtype
from tutorloop.train.resume import train_and_merge, trainer_args, work_dir


def make_sft_trainer_class(device):
    """The trainer class for `device`: TRL's own on GPUs, the plain-loss override on CPU."""
    from trl import SFTTrainer

    if device.type != "cpu":
        # On a GPU TRL's fused, chunked loss is the memory-lean path (it never materialises the
        # full fp32 logits) and logs entropy and token accuracy; the override only pays on CPU.
        return SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        """SFTTrainer with the model's own loss (CPU only).

        TRL 1.16 computes the loss through a fused LM head with chunked fp32 log-probs and extra
        metrics (entropy, token accuracy); on CPU that path took ~44% of each step, and
        `model(**inputs).loss` gives the same loss (labels are -100 on the prompt) 1.5x faster.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            from transformers import Trainer

            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return PlainLossSFTTrainer


def to_conversations(rows: list[dict], p: Prompt) -> list[dict]:
    """TRL's conversational prompt-completion format: the loss falls on the solution alone."""
    return [{"prompt": messages(r["question"], p.system, p.template),
             "completion": [{"role": "assistant", "content": r["solution"]}]} for r in rows]


def resolve_batch(cfg: Sft, model) -> tuple[int, int]:
    """(per-device batch, grad_accum) for sft.batch_size on the model's device."""
    return device_batch(cfg.batch_size, cfg.grad_accum, model, cfg.max_length, SFT_BATCH_CPU)


def build_trainer(params: Params, model, tok, rows: list[dict], work: Path, callbacks=(),
                  batch: tuple[int, int] | None = None, *, runtime: ResolvedRuntime):
    """The SFT trainer exactly as the stage configures it (tests inspect its collator), at
    `runtime`'s precision. `batch`: (per-device batch, grad_accum), resolved from params when not given."""
    from datasets import Dataset
    from trl import SFTConfig

    cfg = params.sft
    per_device, accum = batch or resolve_batch(params.sft, model)
    args = SFTConfig(
        **trainer_args(work, learning_rate=cfg.learning_rate, epochs=cfg.epochs, batch=per_device, grad_accum=accum,
                       warmup_ratio=cfg.warmup_ratio, max_length=cfg.max_length, seed=cfg.seed,
                       logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, runtime=runtime),
        completion_only_loss=True,
        # padding is compute on a CPU: similar lengths per batch (still shuffled across batches)
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random")
    return make_sft_trainer_class(model.device)(
        model=model, args=args, train_dataset=Dataset.from_list(to_conversations(rows, params.prompt)),
        processing_class=tok, peft_config=lora_config(cfg.lora), callbacks=list(callbacks))


def train_sft(params: Params, base: Path, train_file: Path, out: Path, callbacks=(), *,
              runtime: ResolvedRuntime) -> dict:
    """Fine-tune `base` on the records of `train_file` on the stage's resolved `runtime`, merge,
    save to `out`; the run's metrics."""
    rows = read_jsonl(train_file, required=("question", "solution"))
    model, tok = load(base, dtype=train_dtype(runtime), device=runtime.device)
    batch = resolve_batch(params.sft, model)
    # auto: the resolved split is part of the run (a resumed run must keep it)
    split = [list(batch)] if params.sft.batch_size == "auto" else []
    work = work_dir("sft", params.sft.model_dump(), params.prompt.model_dump(), base, train_file, runtime.dtype, *split,
                    code=Path(__file__))
    trainer = build_trainer(params, model, tok, rows, work, callbacks, batch, runtime=runtime)
    run = train_and_merge(trainer, work, tok, out, base)
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * params.sft.epochs
    return {"train_loss": run.result.training_loss, "train_seconds": run.seconds,
            "train_tokens_per_second": tokens / run.seconds, "examples": len(rows),
            "batch_size": batch[0], "grad_accum": batch[1], "resumed_from_step": run.resumed_from_step,
            "precision": runtime.dtype, "processes": world_size()}
