"""Problem sets from outside the project: GSM8K (a local jsonl or a `datasets` id) for
evaluation and decontamination, and jsonl/dataset seed rows for generation.

`decontaminate` (the n-gram gate), `evaluate` (accuracy) and `followup` (the gate on new
problems) must read the same GSM8K problems, so the loader lives here, in a library module:
a stage importing another stage would make DVC re-run it whenever the other one is edited.

GSM8K format: ``question`` and ``answer`` whose last line is ``#### N``.

    python -c "from tutorloop.config import load_params; from tutorloop.data.evalsets import load_gsm8k; print(len(load_gsm8k(load_params().evaluate.gsm8k) or []))"
"""

from __future__ import annotations

import sys
from pathlib import Path

from tutorloop.config import Gsm8k, Seeds
from tutorloop.data.jsonl import read_jsonl
from tutorloop.errors import DataError


def load_gsm8k(cfg: Gsm8k) -> list[dict] | None:
    """GSM8K problems as {id, question, answer, solution}, or None when none is configured/present."""
    if cfg.path:
        if not Path(cfg.path).exists():
            if cfg.path != type(cfg).model_fields["path"].default:
                # a path someone set: a typo must not quietly turn off GSM8K and its decontamination gate
                raise DataError(f"evaluate.gsm8k.path: {cfg.path} does not exist (it also feeds decontamination); "
                                "fix the path, or set it to '' to run without GSM8K")
            # the shipped default, absent on a machine without ../shared: the loop runs without GSM8K
            print(f"evaluate: GSM8K file {cfg.path} not found; skipping GSM8K", file=sys.stderr)
            return None
        rows = read_jsonl(cfg.path, required=("question", "answer"))
    elif cfg.dataset:
        from datasets import load_dataset

        rows = list(load_dataset(cfg.dataset, cfg.subset or None, split=cfg.split))
    else:
        return None
    if cfg.limit:
        rows = rows[:cfg.limit]
    return [{"id": f"gsm8k-{i}", "question": r["question"], "solution": r["answer"],
             "answer": r["answer"].split("####")[-1].strip()} for i, r in enumerate(rows)]


def gsm8k_problems(cfg: Gsm8k, snapshot: Path | None = None) -> list[dict] | None:
    """The GSM8K problems a stage uses: the `inputs` stage's copy when the pipeline hands one over
    (data/inputs/gsm8k.jsonl, a DVC dep; empty = none), else straight from the config (a stage
    run by hand, a test)."""
    if snapshot is None:
        return load_gsm8k(cfg)
    return read_jsonl(snapshot, required=("id", "question", "answer"), allow_empty=True) or None


# Optional seed columns kept beside question and answer: ASDiv's `formula` (the dataset teacher
# writes a solution from it), and the labels frontier practice predicts pass rates by.
SEED_EXTRAS = ("formula", "grade", "type")


def _seed_row(r: dict) -> dict:
    row = {"question": r["question"], "answer": r.get("answer", "")}
    row.update({k: r[k] for k in SEED_EXTRAS if r.get(k) not in (None, "")})
    return row


def seed_rows(cfg: Seeds) -> tuple[list[dict], str]:
    """(rows, source) of jsonl/dataset seeds as {question, answer, formula?, grade?, type?};
    ([], "") for procedural."""
    if cfg.source == "jsonl":
        rows = read_jsonl(cfg.path, required=("question",))
        return [_seed_row(r) for r in rows], cfg.path
    if cfg.source == "dataset":
        from datasets import load_dataset

        ds = load_dataset(cfg.dataset, cfg.subset or None, split=cfg.split)
        return [_seed_row(r) for r in ds], f"{cfg.dataset}/{cfg.split}"
    return [], ""
