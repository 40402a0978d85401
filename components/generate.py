"""Stage `generate`: the teacher writes problems and solutions, split into sft / practice / test.

Every record: ``{id, question, solution, answer, family, provenance}``. The split is made after
de-duplication (normalised question text), so no problem appears in two sets; solutions longer
than `max_answer_chars` are dropped (Orca-Math's 1,800-character rule) and counted.

    python -m components.generate data/generated
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from components import tracking
from components.config import Generate, load_params
from components.data import write_jsonl
from components.teachers import make_teacher, normalise

SPLITS = ("sft", "practice", "test")


def run(config: Generate, out: Path) -> dict:
    """Write out/{sft,practice,test}.jsonl and return counts."""
    teacher = make_teacher(config.teacher, config.families)
    sizes = {"sft": config.n_sft, "practice": config.n_practice, "test": config.n_test}
    wanted = sum(sizes.values())
    # Draw more until the filters leave enough. A teacher's first n problems for a seed are a
    # prefix of its first 2n, so growing the draw never changes what was already kept.
    n = wanted
    while True:
        records = teacher.problems(n, config.seed)
        kept = [r for r in records if len(r["solution"]) <= config.max_answer_chars]
        if len(kept) >= wanted:
            break
        if n >= 16 * wanted:
            raise RuntimeError(f"only {len(kept)} of {n} problems pass the filters; {wanted} needed "
                               f"(generate.max_answer_chars={config.max_answer_chars})")
        n *= 2
    kept = kept[:wanted]
    dropped_long = records.index(kept[-1]) + 1 - wanted
    random.Random(config.seed).shuffle(kept)
    counts: dict[str, int | float] = {"dropped_too_long": dropped_long}
    start = 0
    for split in ("test", "practice", "sft"):  # test first: its size never depends on the others
        part = kept[start:start + sizes[split]]
        start += sizes[split]
        for r in part:
            r["id"] = f"{split}-{hashlib.sha1(normalise(r['question']).encode()).hexdigest()[:12]}"
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
