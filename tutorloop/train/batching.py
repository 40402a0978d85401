"""Training batches per device: what `sft.batch_size` / `preference.batch_size: auto` resolve to.

On CPU, `auto` is the measured small default (tutorloop/config/schema.py: SFT_BATCH_CPU,
PREFERENCE_BATCH_CPU). On CUDA the batch is sized from the memory that is free once the model is
loaded, with an estimate of what one example costs (`train_example_bytes`): activations kept for
the backward pass without activation checkpointing (~34 x hidden bytes per token and layer in
bf16 plus 5 x heads x seq_len for attention scores; Korthikanti et al. 2022) and the logits with
their fp32 loss copies (conservative for SFT, whose fused TRL loss tiles the LM head instead).

`auto` keeps the *optimisation* the same on every device: the effective batch (batch_size x
grad_accum) stays the CPU default x grad_accum, and only how it is split changes (e.g. 8 x 2 on
CPU, 16 x 1 on a GPU). A bigger effective batch would need another learning rate; ask for one
explicitly (an integer batch_size) if you want it.

`MEMORY_SHARE` of the free memory is budgeted (tutorloop/hardware.py, shared with the engine's
rows in tutorloop/inference/batching.py). An estimate written without a GPU at hand
(tests/test_cuda.py checks it on one when present); an integer batch_size always overrides it.
Resolved when a stage starts; sft/preference metrics record batch_size and grad_accum.

Under `training.launcher: accelerate` the *global* batch stays batch x grad_accum: each of the
launch's processes takes grad_accum / processes (or, where that does not divide, batch /
processes) — `split_over`, so N processes run the optimisation one process runs.
"""

from __future__ import annotations

import torch

from tutorloop.errors import ConfigError
from tutorloop.hardware import MEMORY_SHARE, free_memory
from tutorloop.runtime.distributed import world_size

MAX_TRAIN_BATCH = 256


def train_example_bytes(config, seq_len: int, pairs: bool = False) -> int:
    """Activation bytes one training example keeps for the backward pass (bf16, no activation
    checkpointing); `pairs`: a DPO/KTO example runs two sequences (chosen + rejected)."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    per_layer = seq_len * (34 * cfg.hidden_size + 5 * cfg.num_attention_heads * seq_len)
    logits = seq_len * cfg.vocab_size * (2 + 4 + 4)   # bf16 logits, the fp32 copy for the loss, its grad
    return (cfg.num_hidden_layers * per_layer + logits) * (2 if pairs else 1)


def train_batch(setting: int | str, grad_accum: int, *, device: torch.device, cpu_default: int,
                example_bytes: int, free_bytes: int | None = None) -> tuple[int, int]:
    """(per-device batch, grad_accum). An integer `setting` is used as given. auto: the CPU
    default on CPU; on CUDA the largest divisor of the effective batch (cpu_default x grad_accum)
    that fits, so batch x grad_accum is exactly the same optimisation as on CPU."""
    if setting != "auto":
        return int(setting), grad_accum
    if device.type != "cuda":
        return cpu_default, grad_accum
    effective = cpu_default * grad_accum
    free = free_memory(device) if free_bytes is None else free_bytes
    fit = min(int(free * MEMORY_SHARE) // max(1, example_bytes), MAX_TRAIN_BATCH)
    batch = max([d for d in range(1, effective + 1) if effective % d == 0 and d <= fit] or [1])
    return batch, effective // batch


def device_batch(setting: int | str, grad_accum: int, model, max_length: int, cpu_default: int,
                 pairs: bool = False) -> tuple[int, int]:
    """(per-device batch, grad_accum) for `batch_size: setting` on the model's device (auto keeps
    batch x grad_accum the same on every device)."""
    batch, accum = train_batch(setting, grad_accum, device=model.device, cpu_default=cpu_default,
                               example_bytes=train_example_bytes(model.config, max_length, pairs))
    return split_over(batch, accum, world_size())


def split_over(batch: int, grad_accum: int, processes: int) -> tuple[int, int]:
    """(per-device batch, grad_accum) of each of `processes` ranks so that together they take the
    global batch `batch x grad_accum`: the accumulation is split first (each rank keeps its
    batch), else the batch."""
    if processes == 1:
        return batch, grad_accum
    if grad_accum % processes == 0:
        return batch, grad_accum // processes
    if batch % processes == 0:
        return batch // processes, grad_accum
    raise ConfigError(f"training.processes: {processes} -> the global batch {batch} x {grad_accum} cannot be split "
                      f"over {processes} processes: make grad_accum or batch_size a multiple of {processes}")
