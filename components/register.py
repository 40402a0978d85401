"""Stage `register@<checkpoint>`: add the checkpoint to the MLflow registry, promote if earned.

The checkpoint becomes a new version of `register.model_name` (weights logged with
`mlflow.transformers`, so ``models:/tutor@champion`` loads offline), tagged with its lineage
(round, parent, git commit, dvc.lock hashes of its weights, training data and parent model) and
described by a generated model card (metrics with CIs, provenance counts, the params of every
stage that made it); tutorloop/registry/version.py. Promotion is earned: the `champion` alias
moves to the new version only if it beats the current champion on the same held-out problems —
exact one-sided McNemar test, p < alpha — and otherwise it gets `challenger` with tags saying
why. Champions are scoped by evaluation (protocol and problem ids: `champion-<scope>`), so a new
protocol or test set starts a new scope instead of freezing promotion
(tutorloop/registry/promotion.py).

Inputs: besides its declared deps, the stage reads dvc.lock — the hashes and params of the
stages that made the checkpoint — which cannot be a dep, since DVC rewrites it after every stage
(tutorloop/registry/lineage.py). Of params.yaml it reads only `register`.

Nothing is registered unless the checkpoint and a non-empty evaluation exist; DVC runs this stage
only after `evaluate` (and, upstream, `decontaminate`) succeeded.

    python -m components.register 1 models/round-1 metrics/1.json eval/1/predictions.jsonl registry/1.json --data data/clean
"""

from __future__ import annotations

import os
from pathlib import Path

from tutorloop.registry.version import register
from tutorloop.runtime.stage import Arg, stage


@stage("register", Arg("checkpoint"), Arg("model", Path), Arg("metrics", Path), Arg("predictions", Path),
       Arg("out", Path), Arg("--data", Path, "training data dir, for provenance counts"), round_arg="checkpoint",
       logged=lambda params, args: params.register_.model_dump())
def main(params, args, log) -> dict:
    # Logging a local model needs no hub; without this, mlflow.transformers spends ~25 s retrying
    # to fetch a model card and license for a repo id that does not exist.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    record = register(params, args.checkpoint, args.model, args.metrics, args.predictions, args.out, log,
                      data_dir=args.data)
    return {k: v for k, v in record.items() if isinstance(v, (int, float))} | {"version": int(record["version"])}


if __name__ == "__main__":
    main()
