"""Stage `inputs`: snapshot the files from outside the project that the loop reads.

GSM8K (`evaluate.gsm8k`: a jsonl beside the project, or a `datasets` id) is read by
decontaminate, evaluate and followup; jsonl or dataset seeds (`generate.seeds`) by generate.
Those paths may be empty or absent on a user's machine (the loop then skips GSM8K), and DVC
fails on a missing dependency, so they cannot be listed as deps themselves. This stage copies
what is there into the project instead, and the consumers depend on the copies:

* data/inputs/gsm8k.jsonl — the GSM8K problems evaluation uses ({id, question, solution,
  answer}, after `evaluate.gsm8k.limit`); empty when none is configured or the file is absent.
* data/inputs/seeds.jsonl — the raw seed rows (question, answer) when seeds come from a jsonl
  file or a dataset; empty for the procedural teacher.
* data/inputs/manifest.json — where each came from, its sha256 and row count (a DVC metric).

The stage is `always_changed`: DVC runs it on every `dvc repro` (a second or two: it hashes and
copies), but a stage downstream re-runs only when a copy's content changed — so an edited GSM8K
file re-scores and re-decontaminates, and an unchanged one costs nothing. It logs nothing to
MLflow: it is plumbing, and a no-op repro must leave the tracking server untouched.

    python -m components.inputs data/inputs
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from components.config import Params, load_params
from components.data import read_jsonl, write_json, write_jsonl
from components.evalsets import load_gsm8k


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seed_rows(params: Params) -> tuple[list[dict], str]:
    """(rows, source) of jsonl/dataset seeds as {question, answer}; ([], "") for procedural."""
    s = params.generate.seeds
    if s.source == "jsonl":
        rows = read_jsonl(s.path, required=("question",))
        return [{"question": r["question"], "answer": r.get("answer", "")} for r in rows], s.path
    if s.source == "dataset":
        from datasets import load_dataset

        ds = load_dataset(s.dataset, s.subset or None, split=s.split)
        return [{"question": r["question"], "answer": r.get("answer", "")} for r in ds], f"{s.dataset}/{s.split}"
    return [], ""


def run(params: Params, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    g = params.evaluate.gsm8k
    gsm8k = load_gsm8k(g) or []
    write_jsonl(out / "gsm8k.jsonl", gsm8k)
    seeds, source = seed_rows(params)
    write_jsonl(out / "seeds.jsonl", seeds)
    src = Path(g.path) if g.path else None
    manifest = {
        "gsm8k": {"source": g.path or g.dataset, "rows": len(gsm8k),
                  "source_sha256": _sha256(src) if src is not None and src.exists() else "",
                  "sha256": _sha256(out / "gsm8k.jsonl")},
        "seeds": {"source": source, "rows": len(seeds), "sha256": _sha256(out / "seeds.jsonl")},
    }
    write_json(manifest, out / "manifest.json")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    m = run(load_params(), args.out)
    print(f"inputs: GSM8K {m['gsm8k']['rows']} problems ({m['gsm8k']['source'] or 'none'}), "
          f"seeds {m['seeds']['rows']} rows ({m['seeds']['source'] or 'procedural'})")


if __name__ == "__main__":
    from components.entry import run_main

    run_main(main)  # bad input (a missing seeds file, a malformed params.yaml): one line, exit 2
