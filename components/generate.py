"""Stage `generate`: the teacher writes problems and solutions, split into sft / practice / test.

Every record: ``{id, question, solution, answer, family, provenance}``. Splits come from separate
seeded streams and skip questions an earlier split holds (normalised text), so no problem appears
in two sets and the test set never depends on the other sizes; solutions longer than
`max_answer_chars` are dropped (Orca-Math's 1,800-character rule) and counted.

    python -m components.generate data/generated
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from pathlib import Path

from components import tracking
from components.config import Generate, load_params
from components.data import write_jsonl
from components.teachers import make_teacher, normalise

SPLITS = ("sft", "practice", "test")


def _stream_seed(seed: int, split: str) -> int:
    return int(hashlib.sha1(f"{seed}/{split}".encode()).hexdigest()[:8], 16)


def _draw(teacher, n: int, seed: int, keep) -> tuple[list[dict], list[dict]]:
    """The first `n` problems of the teacher's stream that pass `keep`, and all records examined.

    A teacher's first k problems for a seed are a prefix of its first 2k, so growing the draw
    never changes what was already kept.
    """
    size = n
    while True:
        records = teacher.problems(size, seed)
        kept = [r for r in records if keep(r)]
        if len(kept) >= n:
            return kept[:n], records[:records.index(kept[n - 1]) + 1]
        if size >= 16 * n + 64:
            raise RuntimeError(f"only {len(kept)} of {size} problems pass the filters; {n} needed")
        size *= 2


def run(config: Generate, out: Path) -> dict:
    """Write out/{sft,practice,test}.jsonl and return counts.

    Each split is drawn from its own seeded stream, test first, and later splits skip any question
    an earlier one holds. So the held-out set depends only on (teacher, seed, n_test): growing
    n_sft never swaps test problems, and accuracies stay comparable across runs.
    """
    teacher = make_teacher(config.teacher, config.families)
    taken: set[str] = set()
    counts: dict[str, int | float] = {"dropped_too_long": 0, "dropped_overlap": 0}
    for split, n in (("test", config.n_test), ("practice", config.n_practice), ("sft", config.n_sft)):
        def keep(r: dict) -> bool:
            return len(r["solution"]) <= config.max_answer_chars and normalise(r["question"]) not in taken

        part, examined = _draw(teacher, n, _stream_seed(config.seed, split), keep)
        long_ = sum(len(r["solution"]) > config.max_answer_chars for r in examined)
        counts["dropped_too_long"] += long_
        counts["dropped_overlap"] += len(examined) - len(part) - long_
        for r in part:
            key = normalise(r["question"])
            taken.add(key)
            r["id"] = f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        write_jsonl(out / f"{split}.jsonl", part)
        counts[f"n_{split}"] = len(part)
        for fam, c in Counter(r["family"] for r in part).items():
            counts[f"family/{split}/{fam}"] = c
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    params = load_params()
    with tracking.stage_run("generate", params.generate.model_dump()) as log:
        counts = run(params.generate, args.out)
        log.metrics(counts)
        sample = [json.loads(line) for line in (args.out / "sft.jsonl").read_text().splitlines()[:20]]
        log.json(sample, "sample/sft_first20.json")


if __name__ == "__main__":
    main()
