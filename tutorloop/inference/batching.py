"""Batch sizes per device: what `batch_size: auto` resolves to (practice, evaluate, sft, preference).

On CPU, `auto` is the measured small default (tutorloop/config/schema.py: ENGINE_ROWS_CPU,
SFT_BATCH_CPU, PREFERENCE_BATCH_CPU): more rows only add latency on 2 cores. On CUDA the batch is
sized from the memory that is free once the model is loaded (`torch.cuda.mem_get_info`), with an
estimate of what one row (generation) or one example (training) costs:

* **Engine rows** (`engine_rows`): the slot KV cache is preallocated per row — 2 (K and V) x
  layers x KV heads x head dim x the engine's buffer width x the weights' bytes — plus the
  step's fp32 logits and the sampler's temporaries over the vocabulary. Capped at the number of
  sequences there are to decode (a bigger cache would only be allocated, never used) and at
  `MAX_ENGINE_ROWS` (past ~1K rows a small model's decode step is compute-bound: more rows add
  step time, not throughput).
* **Training examples** (`train_batch`): activations kept for the backward pass without
  activation checkpointing (~34 x hidden bytes per token and layer in bf16 plus 5 x heads x
  seq_len for attention scores; Korthikanti et al. 2022) and the logits with their fp32 loss
  copies (conservative for SFT, whose fused TRL loss tiles the LM head instead). `auto` keeps the *optimisation* the same on every device: the effective batch
  (batch_size x grad_accum) stays the CPU default x grad_accum, and only how it is split
  changes (e.g. 8 x 2 on CPU, 16 x 1 on a GPU). A bigger effective batch would need another
  learning rate; ask for one explicitly (an integer batch_size) if you want it.

`MEMORY_SHARE` of the free memory is budgeted: the estimates leave out allocator fragmentation,
CUDA workspaces and the prefill's transient activations. These are estimates written without a
GPU at hand (tests/test_cuda.py checks them on one when present); an integer batch_size always
overrides them.

Resolved when a stage starts; the stages record the result (practice/evaluate metrics:
batch_size; sft/preference metrics: batch_size, grad_accum).
"""

from __future__ import annotations

import torch

MEMORY_SHARE = 0.7        # of the free GPU memory, for the batch
MAX_ENGINE_ROWS = 1024    # past this a small model's decode step is compute-bound
MAX_TRAIN_BATCH = 256


def free_memory(device: torch.device) -> int:
    """Bytes free on a CUDA device now (after the model was loaded)."""
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def _elem_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def engine_row_bytes(config, capacity: int, dtype: torch.dtype) -> int:
    """Bytes one engine row holds: its slot-KV buffers, its logits and sampling temporaries."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * heads * dim * capacity * _elem_bytes(dtype)
    # logits in the weights' dtype, their fp32 copy, and ~3 fp32 vocab-wide temporaries in `sample`
    logits = cfg.vocab_size * (_elem_bytes(dtype) + 4 * 4)
    state = capacity * 8 + capacity * 8   # the attention mask and out_tok rows (int64)
    return kv + logits + state


def engine_rows(setting: int | str, *, device: torch.device, cpu_default: int, row_bytes: int,
                sequences: int, k: int = 1, free_bytes: int | None = None) -> int:
    """Rows the engine decodes together: `setting` itself if an integer; for auto, the CPU
    default on CPU, else what MEMORY_SHARE of the free memory holds, in whole prompts (K rows
    each), at most `sequences` (prompts x K) and MAX_ENGINE_ROWS."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return cpu_default
    free = free_memory(device) if free_bytes is None else free_bytes
    fit = int(free * MEMORY_SHARE) // max(1, row_bytes)
    rows = min(fit, MAX_ENGINE_ROWS, max(sequences, k))
    return max(k, rows - rows % k)


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

