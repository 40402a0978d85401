"""Stage `report`: the accuracy curve over checkpoints (base, SFT, each round) as CSV and PNG.

Reads metrics/<checkpoint>.json written by `evaluate`, writes reports/accuracy.csv (a DVC plot:
`dvc plots show`) and reports/accuracy.png, and `table()` renders the same rows for the CLI.

    python -m components.report metrics reports
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

COLUMNS = ["checkpoint", "accuracy", "ci95_low", "ci95_high", "n", "gsm8k_accuracy", "gsm8k_n"]


def _order(name: str) -> tuple[int, int]:
    return (0, 0) if name == "base" else (1, int(name)) if name.isdigit() else (2, 0)


def rows(metrics_dir: Path) -> list[dict]:
    """One row per evaluated checkpoint, in loop order: base, 0 (SFT), 1, 2, ..."""
    out = []
    for path in sorted(Path(metrics_dir).glob("*.json"), key=lambda p: _order(p.stem)):
        m = json.loads(path.read_text())
        g = m.get("gsm8k", {})
        out.append({"checkpoint": path.stem, "accuracy": m["accuracy"], "ci95_low": m["ci95_low"],
                    "ci95_high": m["ci95_high"], "n": m["n"],
                    "gsm8k_accuracy": g.get("accuracy", ""), "gsm8k_n": g.get("n", "")})
    return out


def label(checkpoint: str) -> str:
    return {"base": "base", "0": "round 0 (SFT)"}.get(checkpoint, f"round {checkpoint}")


def table(metrics_dir: Path):
    """A rich Table of accuracy per checkpoint."""
    from rich.table import Table

    t = Table(title="tutorloop: held-out accuracy per checkpoint")
    for col in ("checkpoint", "held-out acc", "95% CI", "n", "GSM8K acc", "GSM8K n"):
        t.add_column(col, justify="right")
    for r in rows(metrics_dir):
        gsm = f"{r['gsm8k_accuracy']:.1%}" if r["gsm8k_accuracy"] != "" else "-"
        t.add_row(label(r["checkpoint"]), f"{r['accuracy']:.1%}",
                  f"{r['ci95_low']:.1%}-{r['ci95_high']:.1%}", str(r["n"]), gsm, str(r["gsm8k_n"] or "-"))
    return t


def run(metrics_dir: Path, out_dir: Path) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rows(metrics_dir)
    if not data:
        raise FileNotFoundError(f"no metrics in {metrics_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "accuracy.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(data)
    xs = list(range(len(data)))
    acc = [r["accuracy"] for r in data]
    err = [[a - r["ci95_low"] for a, r in zip(acc, data)], [r["ci95_high"] - a for a, r in zip(acc, data)]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(xs, acc, yerr=err, marker="o", capsize=4, label="held-out (95% CI)")
    gsm = [(x, r["gsm8k_accuracy"]) for x, r in zip(xs, data) if r["gsm8k_accuracy"] != ""]
    if gsm:
        ax.plot(*zip(*gsm), marker="s", linestyle="--", label="GSM8K")
    ax.set_xticks(xs, [label(r["checkpoint"]) for r in data])
    ax.set_ylabel("pass@1 accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=120)
    plt.close(fig)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    run(args.metrics, args.out)
    from rich.console import Console

    Console().print(table(args.metrics))


if __name__ == "__main__":
    main()
