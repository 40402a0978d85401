"""Plumbing every stage shares, none of which changes what a stage computes (so it is left out
of dvc.yaml's deps): the stage runner (stage.py), how a stage's process ends (entry.py), signals
(signals.py), MLflow runs (tracking.py), a thread pool that stops promptly (pool.py) and
dvc.yaml's library deps from the import graph (deps.py, `tutorloop deps --write`).

May import: tutorloop.errors, secrets, config (and mlflow, lazily). Nothing that computes.
"""
