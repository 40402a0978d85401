"""Evaluation's workload with the engine's prompt passes and with one padded pass: what prefill costs.

Evaluation decodes one greedy completion per problem, so unlike practice (K = 4 samples share
one prompt pass) every problem pays its own prompt pass, and the first admission of a run takes
up to `--rows` prompts at once. The engine computes the tokens all prompts start with (chat
template + system prompt) once per run (`_Run._prefix`) and cuts an admission into length-sorted
passes padded to their own longest (`_Run._passes`); the baseline is what it did before: whole
prompts, one pass per admission padded to the longest (`PREFIX_MIN_TOKENS` and `PAD_SHARE` set
out of reach). A B A B in one process; prints wall seconds, the seconds spent in prompt passes,
useful tok/s and whether the completions are identical. The first line names the machine.

Measured (2026-12-06, AMD EPYC, AVX2, fp32, 2 cores; the quick demo's SFT model): its 100
held-out problems 106.7 -> 89.1 s (1.20x; prompt passes 44.5 -> 23.6 s), 128 GSM8K problems
(`--questions ../shared/data/gsm8k/train.jsonl --problems 128 --new-tokens 256`) 192.7 -> 131.3 s
(1.47x; 101.7 -> 44.3 s); completions identical in every run.

    python benchmarks/prefill.py [models/round-0] [--problems 100] [--questions data.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation import SYSTEM, practice_prompts  # noqa: E402  (the same system prompt as the other benchmarks)

from tutorloop import hardware, modeling  # noqa: E402
from tutorloop.inference import engine  # noqa: E402


def timed_run(model, tok, prompts: list[str], args, shared: bool) -> dict:
    """One greedy engine run; `shared`: the engine's prompt passes (True) or one padded pass of whole prompts."""
    spent = {"prefill": 0.0}
    original = engine._Run._prefill

    def prefill(run, ids):
        t = time.perf_counter()
        out = original(run, ids)
        spent["prefill"] += time.perf_counter() - t
        return out

    limit, pad = (engine.PREFIX_MIN_TOKENS, engine.PAD_SHARE) if shared else (1 << 30, float("inf"))
    with mock.patch.object(engine._Run, "_prefill", prefill), mock.patch.object(engine, "PREFIX_MIN_TOKENS", limit), \
            mock.patch.object(engine, "PAD_SHARE", pad):
        out = engine.generate(model, tok, prompts, max_new_tokens=args.new_tokens, batch_size=args.rows,
                              calculator=True, desc="engine" if shared else "one padded pass")
    return {"seconds": out.seconds, "prefill_seconds": spent["prefill"], "tok_s": out.new_tokens / out.seconds,
            "texts": [t[0] for t in out.texts]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/round-0")
    parser.add_argument("--problems", type=int, default=100, help="held-out problems (one greedy completion each)")
    parser.add_argument("--questions", type=Path, default=None,
                        help="a jsonl with `question` fields (e.g. GSM8K); default: the embedded teacher's")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rows", type=int, default=128, help="engine rows in flight")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    precision = hardware.resolve("auto", "cpu")
    print(f"{hardware.cpu_name()}, torch capability {hardware.cpu_capability()}, {precision.dtype} ({precision.reason})")
    model, tok = modeling.load(args.model, dtype=precision.dtype)
    if args.questions:
        questions = [json.loads(line)["question"] for line in args.questions.open()][:args.problems]
        prompts = modeling.chat_prompts(tok, questions, SYSTEM, "{question}")
    else:
        prompts = practice_prompts(tok, args.problems)
    lens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    print(f"{len(prompts)} prompts, {sum(lens) / len(lens):.0f} tokens on average (longest {max(lens)}), "
          f"greedy, calculator on, {args.new_tokens} new tokens at most, {args.rows} rows")

    engine.generate(model, tok, prompts[:4], max_new_tokens=8, batch_size=args.rows)   # warm-up
    runs = {False: [], True: []}
    for shared in (False, True, False, True):
        runs[shared].append(timed_run(model, tok, prompts, args, shared))
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    same = all(a["texts"] == best[False]["texts"] for a in runs[True] + runs[False])
    result = {"cpu": hardware.cpu_name(), "capability": hardware.cpu_capability(), "dtype": str(precision.dtype),
              "problems": len(prompts), "mean_prompt_tokens": sum(lens) / len(lens), "identical_texts": same}
    for shared, label in ((False, "one_pass"), (True, "engine")):
        r = best[shared]
        # Full precision: a tiny model's run takes milliseconds, and a rounded 0.01 s hides whether the
        # prompt passes sit inside the run's time (CI's failure of stop 33).
        result[label] = {k: r[k] for k in ("seconds", "prefill_seconds", "tok_s")}
        print(f"{label:9s} {r['seconds']:7.1f} s (prompt passes {r['prefill_seconds']:5.1f} s)  {r['tok_s']:6.1f} tok/s")
    result["speedup"] = round(best[False]["seconds"] / best[True]["seconds"], 3)
    print(f"speed-up {result['speedup']:.2f}x · completions identical: {same}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
