"""Stage `report`: the accuracy curve over checkpoints (base, SFT, each round) as CSV and PNG.

The stage reads metrics/<checkpoint>.json (from `evaluate`) and, for paired tests, the per-problem
predictions in eval/<checkpoint>/ — its only DVC deps besides its code — and writes
reports/accuracy.csv (a DVC plot: `dvc plots show`) and reports/accuracy.png, logs both to
MLflow, and prints the table. Each checkpoint is compared with the base and with the one before
it on the same problems (won/lost, exact one-sided McNemar p): tutorloop/eval/report.py, which
`tutorloop report` also uses, adding what the stage does not declare (pairs, practice pass rate).
The printed table (not the CSV, an output) has each checkpoint's stage minutes from MLflow too:
it is the table a `dvc exp run` (`tutorloop recipe`) ends with, where no CLI prints another.

    python -m components.report metrics reports --eval eval
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.eval.report import stage_minutes, table, write_report
from tutorloop.runtime.stage import Arg, stage


@stage("report", Arg("metrics", Path), Arg("out", Path),
       Arg("--eval", Path, "eval/ with each checkpoint's predictions (paired tests)"), needs_params=False)
def main(params, args, log) -> dict:
    import sys

    from rich.console import Console

    data = write_report(args.metrics, args.out, args.eval)
    log.artifact(args.out / "accuracy.png", "report")
    log.artifact(args.out / "accuracy.csv", "report")
    # outside a terminal (a recipe's log) as wide as `tutorloop report` prints it: rich would cut to 80 columns
    console = Console() if sys.stdout.isatty() else Console(width=240)
    console.print(table(args.metrics, stage_minutes(Path.cwd()), eval_dir=args.eval))
    return {f"accuracy/{r['checkpoint']}": r["accuracy"] for r in data}


if __name__ == "__main__":
    main()
