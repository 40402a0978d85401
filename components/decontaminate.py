"""Stage `decontaminate`: a gate between generated data and training.

Every record used for training (SFT and practice problems) is checked for word n-gram overlap
(default 13 words, GPT-3's test, on normalised text) with every evaluation problem: the held-out
set and GSM8K when configured. A record is contaminated when at least `min_overlap` of the
n-grams of the shorter of the two texts are shared with one evaluation problem. (GPT-3 drops on any shared 13-gram; templated synthetic
problems share fixed 13-word spans across genuinely different problems, so "any" would drop a
third of a procedural set, while a copied or lightly edited problem shares most of its n-grams.)
Contaminated records are dropped before SFT/DPO, the counts are logged, and the stage fails if
the dropped share exceeds `max_share` — a teacher that copies benchmark problems should stop the
loop, not quietly shrink the data.

    python -m components.decontaminate data/generated data/clean
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.config import Params
from tutorloop.data.contamination import EvalIndex
from tutorloop.data.evalsets import gsm8k_problems
from tutorloop.data.jsonl import read_jsonl, write_json, write_jsonl
from tutorloop.eval.signal import empty_history, history_path
from tutorloop.runtime.stage import Arg, stage

TRAINING_SPLITS = ("sft", "practice")


def run(params: Params, generated: Path, out: Path, practice_next: Path | None = None,
        gsm8k_file: Path | None = None) -> dict:
    cfg = params.decontaminate
    eval_sets = {"heldout": read_jsonl(generated / "test.jsonl", required=("question",))}
    gsm8k = gsm8k_problems(params.evaluate.gsm8k, gsm8k_file)
    if gsm8k:
        eval_sets["gsm8k"] = gsm8k
    index = EvalIndex([p for rows in eval_sets.values() for p in rows], cfg.ngram)
    stats: dict[str, float] = {f"eval_problems/{k}": len(v) for k, v in eval_sets.items()}
    # A configured GSM8K file that is absent is skipped by evaluate too; say so in the metrics.
    stats["gsm8k_checked"] = int(gsm8k is not None)
    total = dropped = 0
    for split in TRAINING_SPLITS:
        rows = read_jsonl(generated / f"{split}.jsonl", required=("id", "question"))
        flags = [index.overlap(r["question"]) >= cfg.min_overlap for r in rows]
        kept = [r for r, bad in zip(rows, flags) if not bad]
        write_jsonl(out / f"{split}.jsonl", kept)
        stats[f"dropped/{split}"] = sum(flags)
        stats[f"kept/{split}"] = len(kept)
        total += len(rows)
        dropped += sum(flags)
    stats["dropped_share"] = dropped / total if total else 0.0
    write_json(stats, out / "decontamination.json")
    if practice_next is not None:  # the practice set round 1 uses (later rounds may extend it)
        write_jsonl(practice_next, read_jsonl(out / "practice.jsonl", allow_empty=True))
        write_json(empty_history(), history_path(practice_next))   # nothing practised yet
    if stats["dropped_share"] > cfg.max_share:
        raise RuntimeError(
            f"decontaminate: {dropped} of {total} training records ({stats['dropped_share']:.1%}) share at "
            f"least {cfg.min_overlap:.0%} of their {cfg.ngram}-grams with an evaluation problem; limit "
            f"decontaminate.max_share={cfg.max_share:.1%}")
    return stats


@stage("decontaminate", Arg("generated", Path), Arg("out", Path),
       Arg("--practice-next", Path, "also write the clean practice set here (round 1's practice set)"),
       Arg("--gsm8k", Path, "the inputs stage's GSM8K copy (default: read the config's)"))
def main(params, args, log) -> dict:
    return run(params, args.generated, args.out, args.practice_next, args.gsm8k)


if __name__ == "__main__":
    main()
