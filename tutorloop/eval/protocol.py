"""The evaluation protocol: a fingerprint of everything about *how* a model was scored that can
change its verdicts. Paired comparisons (promotion, the report's McNemar tests) only pair runs
under the same protocol.
"""

from __future__ import annotations

import hashlib
import json

from tutorloop.config import Evaluate, Prompt
from tutorloop.hardware import ResolvedRuntime


def protocol(cfg: Evaluate, prompt: Prompt, runtime: ResolvedRuntime | None, attention: str | None = None) -> str:
    """A fingerprint of how a model was evaluated: verdicts pair only under the same protocol.

    The numerics are part of it, because they change greedy text: the stage's resolved `runtime`
    (its precision, "float32" / "bfloat16", and its device, "cpu" / "cuda"; None for a server
    backend, whose numerics are its own) and `attention`, the decode attention that ran (kernel /
    sdpa / hf: 1.0% vs 2.2% on the same bf16 weights in one A/B). Moving to a machine that
    decides any of them differently starts a new scope, and the champion stays where it is
    (registry/promotion.py)."""
    local = cfg.backend == "local"
    if local and runtime is None:
        raise ValueError("evaluate.backend: local -> the protocol needs the stage's resolved runtime")
    # a server's precision is its own; "bfloat16" there keeps the fingerprint it had before
    # runtime.precision existed, so server scopes keep their champions
    dtype = runtime.dtype if local else "bfloat16"
    key = {"prompt": prompt.model_dump(), "max_new_tokens": cfg.max_new_tokens, "dtype": dtype,
           "limit": cfg.limit, "fewshot": cfg.fewshot}
    if cfg.calculator:  # only when on, so calculator-free protocols keep their earlier fingerprint
        key["calculator"] = True
    if local:
        key["numerics"] = {"attention": attention, "device": runtime.torch_device.type}
    else:
        # A server decodes with its own kernels and precision (runtime.precision does not apply), so
        # its greedy text can differ from the engine's: verdicts pair within one backend only.
        key["backend"] = cfg.backend
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
