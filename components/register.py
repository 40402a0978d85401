"""Stage `register@<checkpoint>`: add the checkpoint to the MLflow registry, promote if earned.

The model is logged with `mlflow.transformers` (so ``models:/tutor@champion`` loads offline) and
registered as a new version of `register.model_name`, tagged with its lineage: round, git commit,
and the dvc.lock hashes of its weights, its training data and its parent model. The `champion`
alias moves to it only if its held-out accuracy beats the current champion's; otherwise it gets
`challenger`, with a tag saying why. Writes registry/<checkpoint>.json.

Nothing is registered unless the checkpoint and a non-empty evaluation exist.

    python -m components.register 1 models/round-1 metrics/1.json registry/1.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import yaml


from components import tracking
from components.config import Params, load_params
from components.modeling import require_checkpoint

CHAMPION, CHALLENGER = "champion", "challenger"


def producing_stage(checkpoint: str) -> str:
    return {"base": "base_model", "0": "sft"}.get(checkpoint, f"dpo@{checkpoint}")


def lineage(checkpoint: str, params: Params, lock_file: Path = Path("dvc.lock")) -> dict[str, str]:
    """Hashes from dvc.lock of what made this checkpoint: its weights, data and parent model."""
    tags = {"round": checkpoint, "git_commit": tracking.git_commit()}
    if checkpoint != "base":
        tags["parent"] = "base" if checkpoint == "0" else params.rounds[checkpoint].prev
    if not lock_file.exists():
        return tags
    stages = yaml.safe_load(lock_file.read_text()).get("stages", {})
    entry = stages.get(producing_stage(checkpoint), {})
    for out in entry.get("outs", []):
        tags[f"dvc.out.{out['path']}"] = out.get("md5", "")
    for dep in entry.get("deps", []):
        if not dep["path"].endswith(".py"):
            tags[f"dvc.dep.{dep['path']}"] = dep.get("md5", "")
    return tags


def log_transformers_model(model_dir: Path) -> str:
    """Log the checkpoint with mlflow.transformers so `models:/name@alias` loads offline.

    Passed as loaded components: MLflow 3.17's checkpoint-path mode breaks on transformers 5's
    pipeline registry. Requirements are given explicitly: MLflow's inference adds torchvision,
    which has no CPU wheel here.
    """
    import mlflow
    import torch
    import transformers

    from components.modeling import load

    model, tok = load(model_dir)
    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
            "accelerate", "safetensors"]
    info = mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tok},
                                         name="model", task="text-generation", pip_requirements=reqs)
    return info.model_uri


def decide(new_acc: float, champion_acc: float | None) -> tuple[str, str]:
    """(alias, reason): champion only if strictly better than the current champion."""
    if champion_acc is None:
        return CHAMPION, f"first version: accuracy {new_acc:.4f}"
    if new_acc > champion_acc:
        return CHAMPION, f"accuracy {new_acc:.4f} > champion {champion_acc:.4f}"
    return CHALLENGER, f"accuracy {new_acc:.4f} <= champion {champion_acc:.4f}"


def run(params: Params, checkpoint: str, model_dir: Path, metrics_file: Path, out: Path,
        log: tracking.StageLog) -> dict:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    cfg = params.register_
    require_checkpoint(model_dir)
    if not metrics_file.exists():
        raise FileNotFoundError(f"no evaluation at {metrics_file}: refusing to register")
    metrics = json.loads(metrics_file.read_text())
    if not metrics.get("n"):
        raise ValueError(f"{metrics_file}: evaluated on 0 problems: refusing to register")
    accuracy = float(metrics[cfg.metric])
    if not log.active:
        raise RuntimeError("register needs MLflow tracking (TUTORLOOP_TRACKING is off)")

    if cfg.log_model:
        model_uri = log_transformers_model(model_dir)
    else:
        model_uri = model_dir.resolve().as_uri()
    version = mlflow.register_model(model_uri, cfg.model_name)
    client = MlflowClient()
    try:
        champ = client.get_model_version_by_alias(cfg.model_name, CHAMPION)
        tag = champ.tags.get(f"metric.{cfg.metric}")
        # A champion never scored on this metric (register.metric changed) cannot block promotion.
        champ_acc = float(tag) if tag is not None else None
    except MlflowException:
        champ, champ_acc = None, None
    alias, reason = decide(accuracy, champ_acc)
    tags = {f"lineage.{k}": v for k, v in lineage(checkpoint, params).items()}
    tags.update({f"metric.{cfg.metric}": f"{accuracy:.6f}", "promotion": alias,
                 "promotion.reason": reason, "round": checkpoint})
    if "gsm8k" in metrics:
        tags["metric.gsm8k_accuracy"] = f"{metrics['gsm8k']['accuracy']:.6f}"
    for k, v in tags.items():
        client.set_model_version_tag(cfg.model_name, version.version, k, v)
    client.set_registered_model_alias(cfg.model_name, alias, version.version)
    record = {"name": cfg.model_name, "version": version.version, "alias": alias, "reason": reason,
              "accuracy": accuracy, "previous_champion": champ.version if champ else None}
    tracking.write_json(record, out)
    log.tags({"registered_version": version.version, "alias": alias})
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("model", type=Path)
    parser.add_argument("metrics", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    # Logging a local model needs no hub; without this, mlflow.transformers spends ~25 s retrying
    # to fetch a model card and license for a repo id that does not exist.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    params = load_params()
    with tracking.stage_run("register", params.register_.model_dump(), round_key=args.checkpoint) as log:
        record = run(params, args.checkpoint, args.model, args.metrics, args.out, log)
        log.metrics({"version": int(record["version"]), "accuracy": record["accuracy"]})


if __name__ == "__main__":
    main()
