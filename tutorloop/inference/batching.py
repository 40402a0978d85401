"""Engine rows per device: what `batch_size: auto` resolves to for practice and evaluate.
(Training batches are sized in tutorloop/train/batching.py, on the same memory budget.)

On CPU, `auto` is the measured small default (tutorloop/config/schema.py: ENGINE_ROWS_CPU):
more rows only add latency on 2 cores. On CUDA the rows are sized from the memory that is free
once the model is loaded (`torch.cuda.mem_get_info`), with an estimate of what one row costs
(`engine_rows`): the slot KV cache is preallocated per row — 2 (K and V) x layers x KV heads x
head dim x the engine's buffer width x the weights' bytes — plus the step's fp32 logits and the
sampler's temporaries over the vocabulary. Capped at the number of sequences there are to decode
(a bigger cache would only be allocated, never used) and at `MAX_ENGINE_ROWS` (past ~1K rows a
small model's decode step is compute-bound: more rows add step time, not throughput).

`MEMORY_SHARE` of the free memory is budgeted (tutorloop/hardware.py): the estimates leave out
allocator fragmentation, CUDA workspaces and the prefill's transient activations. These are
estimates written without a GPU at hand (tests/test_cuda.py checks them on one when present); an
integer batch_size always overrides them.

Resolved when a stage starts; the stages record the result (practice/evaluate metrics: batch_size).
"""

from __future__ import annotations

import torch

from tutorloop.hardware import MEMORY_SHARE, free_memory

MAX_ENGINE_ROWS = 1024    # past this a small model's decode step is compute-bound


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
