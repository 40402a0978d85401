"""The pipeline's stages: one thin file per `dvc.yaml` stage, nothing else.

Each file parses its paths (`Arg`s), calls the library in `tutorloop/` and writes its outputs,
over the one stage runner `tutorloop.runtime.stage.stage` (argparse, params.yaml, the MLflow run,
signals, exit codes). Run one alone, without DVC or Prefect, from the project root:

    python -m components.practice 1 models/round-0 data/practice-sets/after-0.jsonl data/round-1

May import: tutorloop (anything). Never another stage, never flows/: stages hand off only
through the files dvc.yaml lists, so any stage re-runs alone and a test needs only a folder.
"""
