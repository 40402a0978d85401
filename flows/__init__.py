"""Prefect flows over the DVC stages (pipeline.py) and the `tutorloop` command line (cli.py).

A flow runs stages with `dvc repro -s <stage>` and never re-implements one. May import:
tutorloop (anything). Never components/ directly: a stage runs only through DVC.
"""
