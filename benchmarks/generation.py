"""Sampling throughput: the engine (tutorloop/inference/engine.py) vs HF `generate`, same prompts, one run.

Practice's workload by default: K=4 samples per prompt, temperature 0.7, top_p 0.95, 160 new
tokens, at the precision `auto` resolves to on this machine (bf16 where the CPU computes it
natively, else fp32: tutorloop/hardware.py; `--precision` forces one), on practice-like problems
of the embedded teacher. The first line names the machine: figures are per CPU kind. Both sides count *useful*
tokens only (up to and including EOS; no padding, nothing after EOS). HF runs as practice used
to (32 prompts x K per `generate` call); the engine with its default rows. Also checks that
greedy decoding gives the same completions on both (evaluation must not change), and times the
engine with the calculator on and with torch's SDPA instead of its C attention kernel. Prints the ratio measured in this process, so the figure
compares across machines.

The default workload is 128 problems (512 samples): practice runs 300 a round, and a single
batch would hide what continuous batching is for (refilling rows that finished early, while HF
keeps every row of a call running until its longest sample ends).

It also prints the machine's ceiling for any sampler: every matmul of one decode step at the
engine's rows, timed alone (`gemm_ceiling`). Where the CPU computes in fp32 only, both sides are
bound by it, and a ratio target over HF is read against it: HF's useful tok/s x the target must
stay below the ceiling with attention, sampling and bookkeeping still to pay.

Greedy is checked twice: in fp32, where the engine must equal HF token for token, and in bf16,
where any change of batch composition changes rounding — so the bf16 figure comes with HF
against *itself* at another batch size, the noise floor the engine's figure is read against.

    python benchmarks/generation.py [models/base] [--prompts 128] [--greedy-prompts 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tutorloop import hardware, modeling  # noqa: E402
from tutorloop.inference import engine  # noqa: E402
from tutorloop.teachers import ProceduralTeacher  # noqa: E402

SYSTEM = "You are a careful math tutor. Solve the problem step by step, then give the final answer on its own line as '#### <number>'."


def practice_prompts(tok, n: int) -> list[str]:
    """The benchmarks' workload: n practice-like problems of the embedded teacher, chat-formatted."""
    problems = ProceduralTeacher().problems(n, seed=99)
    return modeling.chat_prompts(tok, [p["question"] for p in problems], SYSTEM, "{question}")


def gemm_ceiling(model, rows: int, reps: int = 3) -> dict:
    """Useful tok/s the matmuls of one decode step allow at `rows` rows, nothing else counted:
    every nn.Linear of the model (the LM head included) on a [rows, in] input at the weights' dtype,
    the best of `reps` passes. The engine fuses q/k/v and gate/up into one matmul each (a little
    faster than these separate shapes), so read it as the ceiling give or take a few percent."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    macs = sum(m.in_features * m.out_features for m in linears)
    with torch.inference_mode():
        xs = {(m.in_features, m.weight.dtype): torch.randn(rows, m.in_features, dtype=m.weight.dtype) for m in linears}
        best = float("inf")
        for i in range(reps + 1):   # the first pass warms the caches and MKL's buffers
            start = time.perf_counter()
            for m in linears:
                F.linear(xs[(m.in_features, m.weight.dtype)], m.weight)
            best = min(best, time.perf_counter() - start) if i else best
    return {"flops_per_token": 2 * macs, "step_seconds": best, "tokens_per_second": rows / best,
            "gflops": 2 * macs * rows / best / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/base")
    parser.add_argument("--prompts", type=int, default=128, help="practice problems (x K samples)")
    parser.add_argument("--greedy-prompts", type=int, default=32, help="problems for the greedy check")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=160)
    parser.add_argument("--hf-batch", type=int, default=32, help="prompts per HF generate call")
    parser.add_argument("--rows", type=int, default=128, help="engine rows in flight")
    parser.add_argument("--fp32-prompts", type=int, default=16, help="greedy prompts checked in fp32 (exact)")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="sampling precision (auto: what the stages would run here)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    hardware.set_threads(0)
    chosen = hardware.resolve(args.precision, "cpu")
    machine = f"{hardware.cpu_name()}, torch capability {hardware.cpu_capability()}, {chosen.dtype} ({chosen.reason})"
    print(f"machine: {machine}")
    model, tok = modeling.load(args.model, dtype=chosen.dtype)
    prompts = practice_prompts(tok, args.prompts + args.greedy_prompts)
    sampling = dict(num_return_sequences=args.samples, do_sample=True, temperature=0.7, top_p=0.95,
                    max_new_tokens=args.new_tokens, seed=0)
    practice = prompts[:args.prompts]
    hf = modeling.generate(model, tok, practice, batch_size=args.hf_batch, desc="HF generate", **sampling)
    en = engine.generate(model, tok, practice, batch_size=args.rows, desc="engine", **sampling)
    es = engine.generate(model, tok, practice, batch_size=args.rows, attention="sdpa",
                         desc="engine, torch SDPA", **sampling)
    ec = engine.generate(model, tok, practice, batch_size=args.rows, calculator=True,
                         desc="engine+calculator", **sampling)
    ceiling = gemm_ceiling(model, args.rows)
    greedy = prompts[args.prompts:]
    g_hf = modeling.generate(model, tok, greedy, max_new_tokens=args.new_tokens, batch_size=50, desc="HF greedy")
    g_en = engine.generate(model, tok, greedy, max_new_tokens=args.new_tokens, batch_size=64, desc="engine greedy")
    same = sum(a == b for a, b in zip(g_hf.texts, g_en.texts))
    g_es = engine.generate(model, tok, greedy, max_new_tokens=args.new_tokens, batch_size=64, attention="sdpa",
                           desc="engine greedy, SDPA")
    same_sdpa = sum(a == b for a, b in zip(g_hf.texts, g_es.texts))
    g_hf8 = modeling.generate(model, tok, greedy, max_new_tokens=args.new_tokens, batch_size=8, desc="HF greedy, batch 8")
    hf_self = sum(a == b for a, b in zip(g_hf.texts, g_hf8.texts))
    del model
    m32, _ = modeling.load(args.model, dtype="float32")
    exact = greedy[:args.fp32_prompts]
    f_hf = modeling.generate(m32, tok, exact, max_new_tokens=args.new_tokens, batch_size=50, desc="HF greedy fp32")
    f_en = engine.generate(m32, tok, exact, max_new_tokens=args.new_tokens, batch_size=64, desc="engine greedy fp32")
    same32 = sum(a == b for a, b in zip(f_hf.texts, f_en.texts))
    # Which bf16 run stays closer to fp32's text: the noise floor has a direction too.
    n32 = len(exact)
    to32 = {name: sum(a == b for a, b in zip(g.texts[:n32], f_hf.texts))
            for name, g in (("engine", g_en), ("engine_sdpa", g_es), ("hf", g_hf))}
    figures = {
        "hf_tokens_per_second": hf.tokens_per_second, "engine_tokens_per_second": en.tokens_per_second,
        "ratio": en.tokens_per_second / hf.tokens_per_second, "engine_attention": en.attention,
        "engine_sdpa_tokens_per_second": es.tokens_per_second,
        "engine_calculator_tokens_per_second": ec.tokens_per_second, "calculator_calls": ec.calculator_calls,
        "hf_greedy_tokens_per_second": g_hf.tokens_per_second,
        "engine_greedy_tokens_per_second": g_en.tokens_per_second,
        "greedy_identical": same, "greedy_n": len(greedy), "hf_vs_hf_batch8_identical": hf_self,
        "greedy_sdpa_identical": same_sdpa,
        "fp32_greedy_identical": same32, "fp32_greedy_n": len(exact),
        "bf16_equals_fp32": to32,
        "samples": args.prompts * args.samples, "hf_tokens": hf.new_tokens, "engine_tokens": en.new_tokens,
        "machine": machine, "precision": chosen.dtype,
        "gemm_ceiling_tokens_per_second": ceiling["tokens_per_second"], "gemm_gflops": ceiling["gflops"],
    }
    print(f"\nsampling: {args.prompts} prompts x K={args.samples}, T=0.7, top_p=0.95, {args.new_tokens} tokens, {chosen.dtype}")
    print(f"  HF generate ({args.hf_batch} prompts/call) {hf.tokens_per_second:8.1f} useful tok/s  ({hf.new_tokens} tokens, {hf.seconds:.1f} s)")
    print(f"  engine ({args.rows} rows)            {en.tokens_per_second:8.1f} useful tok/s  ({en.new_tokens} tokens, {en.seconds:.1f} s; attention: {en.attention})")
    print(f"  ratio engine / HF                  {figures['ratio']:8.2f}x")
    print(f"  engine, torch SDPA attention     {es.tokens_per_second:8.1f} useful tok/s  ({es.new_tokens} tokens, {es.seconds:.1f} s)")
    print(f"  engine + calculator              {ec.tokens_per_second:8.1f} useful tok/s  ({ec.calculator_calls} annotations computed)")
    print(f"  ceiling: the step's matmuls alone {ceiling['tokens_per_second']:7.1f} tok/s at {args.rows} rows "
          f"({ceiling['gflops']:.1f} GFLOP/s, {ceiling['flops_per_token'] / 1e6:.0f} MFLOP a token): engine at "
          f"{en.tokens_per_second / ceiling['tokens_per_second']:.0%} of it, HF at {hf.tokens_per_second / ceiling['tokens_per_second']:.0%}")
    print(f"greedy {chosen.dtype}: HF {g_hf.tokens_per_second:.1f} tok/s, engine {g_en.tokens_per_second:.1f} tok/s; "
          f"identical completions engine vs HF {same}/{len(greedy)} (engine with SDPA {same_sdpa}/{len(greedy)}), "
          f"HF batch 50 vs HF batch 8 {hf_self}/{len(greedy)}")
    closer = "" if chosen.dtype == "float32" else (
        f"; bf16 completions equal to fp32's: engine {to32['engine']}/{n32}, engine with SDPA "
        f"{to32['engine_sdpa']}/{n32}, HF {to32['hf']}/{n32}")
    print(f"greedy fp32: identical completions engine vs HF {same32}/{len(exact)}{closer}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
