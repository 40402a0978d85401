"""Where a sampling run's time goes, by part of the model: the map for the next engine change.

Runs the engine (tutorloop/inference/engine.py) on practice's workload (K=4, T=0.7, top_p 0.95, bf16) and
times, with forward hooks (no profiler overhead on every op), each part of the step: the
attention core (softmax(q kᵀ) v over the KV cache), the q/k/v/o projections, the MLP, the
RMSNorms, the LM head, the whole forward, and the sampler. Prints seconds and shares, so a
change is aimed at what dominates instead of at what looks slow.

Measured here (2026-12-02, 2 cores, 32 problems x 4, 160 tokens, mean window 191 columns, 587
tok/s): attention core + RoPE 46.5% of the run, MLP 21.0%, q/k/v/o 8.6%, LM head 5.0%, norms
3.3%, sampler 5.9%, engine bookkeeping 7.5%. The attention is mostly memory-bound (each row
reads its whole KV window every step — ~560 MB a step at 128 rows — and the K rows of a prompt
read the same prompt KV); the dense matmuls (~85 ms of a ~240 ms step) run near the CPU's bf16
peak. A bmm-based decode attention (one contiguous copy of the window, then
two batched matmuls over grouped query heads) measured neutral against torch's CPU flash kernel
at 128 problems (572 / 612 vs 589 tok/s in one process), so the lever is fewer bytes read, e.g.
a prompt KV shared by the K samples.

The breakdown above is of the engine through HF's modules (`fused=False`: hooks need them);
since 2026-12-02 the engine decodes Llama-family models through one fused step
(tutorloop/inference/fused.py) with a C attention kernel (tutorloop/inference/kernels/attention.py), timed
last: decode steps, the kernel's share of them, the sampler and the rest.

    python benchmarks/decode_profile.py [models/base] [--prompts 32] [--new-tokens 160]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation import practice_prompts  # noqa: E402  (the same workload as the ratio benchmark)

from tutorloop import hardware, modeling  # noqa: E402
from tutorloop.inference import engine  # noqa: E402
from tutorloop.inference.fused import LlamaDecoder  # noqa: E402
from tutorloop.inference.kernels import attention as decode_attention  # noqa: E402


def timed(module, name: str, totals: dict) -> None:
    """Accumulate the wall time of every call of `module` under `name` (CPU ops are synchronous)."""
    start: list[float] = []
    module.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))

    def done(*_):
        totals[name] += time.perf_counter() - start.pop()

    module.register_forward_hook(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/base")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=160)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: what the stages would run on this machine")
    args = parser.parse_args()
    hardware.set_threads(0)
    chosen = hardware.resolve(args.precision, "cpu")
    print(f"machine: {hardware.cpu_name()}, torch capability {hardware.cpu_capability()}, {chosen.dtype}")
    model, tok = modeling.load(args.model, dtype=chosen.dtype)
    prompts = practice_prompts(tok, args.prompts)
    # The hooks need HF's module tree, so the breakdown runs the engine with fused=False; the
    # engine's own path (the fused step, tutorloop/inference/fused.py) is timed after it.
    kw = dict(num_return_sequences=args.samples, do_sample=True, temperature=0.7, top_p=0.95,
              max_new_tokens=args.new_tokens, seed=0, batch_size=args.rows)
    engine.generate(model, tok, prompts[:2], **{**kw, "max_new_tokens": 4})   # warm-up (and kernel build)

    totals: dict[str, float] = defaultdict(float)
    timed(model, "forward", totals)
    timed(model.lm_head, "lm_head", totals)
    for layer in model.model.layers:
        timed(layer.self_attn, "self_attn", totals)
        timed(layer.mlp, "mlp", totals)
        timed(layer.input_layernorm, "norms", totals)
        timed(layer.post_attention_layernorm, "norms", totals)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            timed(getattr(layer.self_attn, proj), "qkvo_proj", totals)
    # The sampler is a module function the engine looks up each step: wrap it for this run only.
    sample = engine.sample

    def timed_sample(*a, **k):
        t = time.perf_counter()
        try:
            return sample(*a, **k)
        finally:
            totals["sampler"] += time.perf_counter() - t

    engine.sample = timed_sample
    try:
        g = engine.generate(model, tok, prompts, desc="engine, HF modules", fused=False, **kw)
    finally:
        engine.sample = sample
    # self_attn includes its projections and RoPE: the core is what is left.
    totals["attention_core+rope"] = totals.pop("self_attn") - totals["qkvo_proj"]
    rest = totals["forward"] - sum(v for k, v in totals.items() if k not in ("forward", "sampler"))
    totals["forward_other"] = rest
    totals["outside_forward"] = g.seconds - totals["forward"] - totals["sampler"]
    print(f"{args.prompts} prompts x K={args.samples}, {args.new_tokens} tokens, {args.rows} rows: "
          f"{g.tokens_per_second:.0f} useful tok/s, {g.new_tokens} tokens, {g.seconds:.1f} s (HF modules, SDPA)")
    for name in ("attention_core+rope", "mlp", "qkvo_proj", "lm_head", "norms", "forward_other",
                 "sampler", "outside_forward"):
        print(f"  {name:22s} {totals[name]:7.2f} s  {totals[name] / g.seconds:6.1%}")

    # The engine's own path: the fused step, and in it the C kernel's attention (when it runs).
    fused: dict[str, float] = defaultdict(float)
    wrapped = [(engine, "sample", "sampler"), (decode_attention, "attention", "attention"),
             (LlamaDecoder, "step", "step")]

    def clock(fn, key):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                fused[key] += time.perf_counter() - t
        return wrapper

    # Timers wrap the engine's own functions for this one run; patch.object restores them on exit.
    with contextlib.ExitStack() as stack:
        for obj, name, key in wrapped:
            stack.enter_context(mock.patch.object(obj, name, clock(getattr(obj, name), key)))
        f = engine.generate(model, tok, prompts, desc="engine", **kw)
    print(f"engine as practice runs it (fused step, attention: {f.attention}): {f.tokens_per_second:.0f} useful "
          f"tok/s, {f.seconds:.1f} s = decode steps {fused['step']:.2f} s (C attention kernel in them "
          f"{fused['attention']:.2f} s), sampler {fused['sampler']:.2f} s, the rest (prefill, bookkeeping) "
          f"{f.seconds - fused['step'] - fused['sampler']:.2f} s")


if __name__ == "__main__":
    main()
