"""Generation throughput: batched bf16 (what practice/evaluate do) vs a batch-1 fp32 baseline.

Prints tokens/s for each setting and its ratio to the baseline measured in the same process, so
the numbers compare across machines. Needs a checkpoint (default models/base, made by
`dvc repro base_model`).

    python benchmarks/generation.py [models/base] [--prompts 32] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.modeling import chat_prompts, generate, load, setup_runtime  # noqa: E402
from components.teachers import ProceduralTeacher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/base")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    setup_runtime(0)
    questions = [r["question"] for r in ProceduralTeacher().problems(args.prompts, seed=99)]
    settings = [("batch 1, fp32 (baseline)", "float32", 1, 1, args.prompts // 4),
                ("batch 32, fp32", "float32", 32, 1, args.prompts),
                ("batch 32, bf16", "bfloat16", 32, 1, args.prompts),
                ("batch 8 x K=4 samples, bf16", "bfloat16", 8, 4, args.prompts // 4)]
    baseline = None
    for name, dtype, batch, k, n in settings:
        model, tok = load(args.model, dtype=dtype)
        prompts = chat_prompts(tok, questions[:n], "Solve step by step.", "{question}")
        g = generate(model, tok, prompts, num_return_sequences=k, do_sample=k > 1, temperature=0.7,
                     top_p=0.95, max_new_tokens=args.new_tokens, batch_size=batch, desc=name)
        baseline = baseline or g.tokens_per_second
        print(f"{name:32s} {g.tokens_per_second:8.1f} tok/s   x{g.tokens_per_second / baseline:.2f}")


if __name__ == "__main__":
    main()
