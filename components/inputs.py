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

from pathlib import Path

from tutorloop.data.digest import file_sha256
from tutorloop.data.evalsets import load_gsm8k, seed_rows
from tutorloop.data.jsonl import write_json, write_jsonl
from tutorloop.runtime.stage import Arg, stage


@stage("inputs", Arg("out", Path), tracked=False)
def main(params, args, log) -> None:
    m = snapshot(params, args.out)
    print(f"inputs: GSM8K {m['gsm8k']['rows']} problems ({m['gsm8k']['source'] or 'none'}), "
          f"seeds {m['seeds']['rows']} rows ({m['seeds']['source'] or 'procedural'})")


def snapshot(params, out: Path) -> dict:
    """Copy GSM8K and the seed rows into `out`; the manifest says where each came from."""
    out.mkdir(parents=True, exist_ok=True)
    g = params.evaluate.gsm8k
    gsm8k = load_gsm8k(g) or []
    write_jsonl(out / "gsm8k.jsonl", gsm8k)
    seeds, source = seed_rows(params.generate.seeds)
    write_jsonl(out / "seeds.jsonl", seeds)
    src = Path(g.path) if g.path else None
    manifest = {
        "gsm8k": {"source": g.path or g.dataset, "rows": len(gsm8k),
                  "source_sha256": file_sha256(src) if src is not None and src.exists() else "",
                  "sha256": file_sha256(out / "gsm8k.jsonl")},
        "seeds": {"source": source, "rows": len(seeds), "sha256": file_sha256(out / "seeds.jsonl")},
    }
    write_json(manifest, out / "manifest.json")
    return manifest


if __name__ == "__main__":
    main()
