"""Registration: a new version of `register.model_name` in the MLflow registry for an evaluated
checkpoint, tagged with its lineage and promotion verdict, described by its model card.

With `register.log_model: true` the weights are logged with `mlflow.transformers` (so
``models:/tutor@champion`` loads offline); with false, the version points at the DVC-owned
folder. Tags: `lineage.*` (round, parent, git commit, dvc.lock hashes of its weights, training
data and parent model; lineage.py), `metric.*`, `promotion*` and `eval.protocol` / `eval.scope`
(promotion.py). The description is the model card (card.py), cut at the SQL backends' 5000
characters; the whole card and the params of every stage that made the checkpoint are artifacts
of the stage's run, beside the per-problem verdicts the next challenger is paired against.

Nothing is registered unless the checkpoint and a non-empty evaluation exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tutorloop.config import CONTROL, Params, Register, control_round
from tutorloop.data.digest import digest
from tutorloop.data.jsonl import read_jsonl, write_json
from tutorloop.errors import DataError
from tutorloop.modeling import require_checkpoint
from tutorloop.registry.card import model_card
from tutorloop.registry.lineage import (
    lineage,
    lock_stages,
    provenance,
    stage_params,
    teachers,
)
from tutorloop.registry.promotion import (
    CHALLENGER,
    CHAMPION,
    WEIGHTS_TAG,
    champion_predictions,
    correctness,
    decide,
    deploy_verdict,
    eval_scope,
    scope_alias,
    scope_champion,
    version_by_alias,
)
from tutorloop.runtime import tracking
from tutorloop.secrets import redact

DESCRIPTION_LIMIT = 5000  # registry descriptions are VARCHAR(5000) on SQL backends


@dataclass(frozen=True)
class Promotion:
    """The verdict on a new version. `alias`/`reason`/`stats`: against its scope's champion
    (`previous`; None: the first version evaluated this way). `deploy`/`deploy_reason`: whether
    the global `champion` (`champion_before`) moves to it — only on paired evidence."""

    alias: str
    reason: str
    stats: dict
    scope: str
    previous: Any = None
    deploy: bool = False
    deploy_reason: str = ""
    champion_before: Any = None

    @property
    def verdict(self) -> str:
        """`champion` if the deployable alias moved to this version, a control's own alias
        (`control-k`: never a candidate), else `challenger`."""
        if self.alias.startswith(CONTROL):
            return self.alias
        return CHAMPION if self.deploy else CHALLENGER


def log_transformers_model(model_dir: Path) -> str:
    """Log the checkpoint with mlflow.transformers so `models:/name@alias` loads offline.

    Passed as loaded components: MLflow 3.17's checkpoint-path mode breaks on transformers 5's
    pipeline registry. Requirements are given explicitly: MLflow's inference adds torchvision,
    which has no CPU wheel here.
    """
    import mlflow
    import torch
    import transformers

    from tutorloop.modeling import load

    model, tok = load(model_dir)
    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
            "accelerate", "safetensors"]
    info = mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tok},
                                         name="model", task="text-generation", pip_requirements=reqs)
    return info.model_uri


def read_evaluation(model_dir: Path, metrics_file: Path, predictions_file: Path) -> tuple[dict, list[dict]]:
    """The checkpoint's metrics and per-problem predictions; refuses a missing checkpoint, a
    missing or empty evaluation, and predictions that do not match the metrics."""
    require_checkpoint(model_dir)
    if not metrics_file.exists():
        raise FileNotFoundError(f"no evaluation at {metrics_file}: refusing to register")
    metrics = json.loads(metrics_file.read_text())
    if not metrics.get("n"):
        raise DataError(f"{metrics_file}: evaluated on 0 problems: refusing to register")
    predictions = read_jsonl(predictions_file, required=("id", "correct"))
    if len(predictions) != metrics["n"]:
        raise DataError(f"{predictions_file}: has {len(predictions)} predictions, metrics say {metrics['n']}")
    return metrics, predictions


def promote(client, cfg: Register, metrics: dict, verdicts: dict[str, bool], weights: str = "") -> Promotion:
    """Pair the new verdicts with the champion of their evaluation scope, then with the deployed
    `champion` (promotion.py: the two questions)."""
    protocol = metrics.get("protocol", "")
    scope = eval_scope(protocol, verdicts)
    champ = scope_champion(client, cfg.model_name, scope)
    champ_preds = champion_predictions(client, champ, scope) if champ else None
    alias, reason, stats = decide(verdicts, champ_preds, cfg, has_champion=champ is not None)
    if champ is None:
        reason += (f" under evaluation scope {scope} (protocol {protocol or 'unknown'}, "
                   f"{len(verdicts)} problems): the first version evaluated this way")
    deployed = version_by_alias(client, cfg.model_name, CHAMPION)
    if deployed is not None and champ is not None and deployed.version == champ.version:
        deployed_preds = champ_preds          # the usual case: one download, one comparison
    else:
        deployed_preds = champion_predictions(client, deployed, scope) if deployed else None
    deploy, why = deploy_verdict(verdicts, deployed, deployed_preds, cfg, weights)
    return Promotion(alias, reason, stats, scope, champ, deploy, why, deployed)


def create_version(client, cfg: Register, model_dir: Path, log: tracking.StageLog):
    """A new model version: the logged weights, or (log_model: false) the DVC-owned folder."""
    import mlflow

    if cfg.log_model:
        return mlflow.register_model(log_transformers_model(model_dir), cfg.model_name)
    if not client.search_registered_models(f"name='{cfg.model_name}'"):
        client.create_registered_model(cfg.model_name)
    return client.create_model_version(cfg.model_name, source=model_dir.resolve().as_uri(), run_id=log.run_id)


def version_tags(cfg: Register, checkpoint: str, metrics: dict, lineage_tags: dict, prom: Promotion) -> dict:
    """The version's tags: lineage, the promotion metric and verdict, the evaluation scope."""
    tags = {f"lineage.{k}": v for k, v in lineage_tags.items()}
    tags.update({f"metric.{cfg.metric}": f"{metrics[cfg.metric]:.6f}", "promotion": prom.verdict,
                 "promotion.reason": prom.deploy_reason, "promotion.scope": prom.alias,
                 "promotion.scope_reason": prom.reason, "round": checkpoint,
                 "eval.protocol": metrics.get("protocol", ""), "eval.scope": prom.scope,
                 "eval.calculator": str(bool(metrics.get("calculator", False))).lower()})
    if "p_value" in prom.stats:
        tags["promotion.p_value"] = f"{prom.stats['p_value']:.6g}"
    if "gsm8k" in metrics:
        tags["metric.gsm8k_accuracy"] = f"{metrics['gsm8k']['accuracy']:.6f}"
    return tags


def describe(client, cfg: Register, version: str, checkpoint: str, metrics: dict, prom: Promotion,
             log: tracking.StageLog, data_dir: Path | None) -> None:
    """Tag the version with its lineage and verdict, and describe it with its model card."""
    stages = lock_stages()
    lineage_tags = lineage(checkpoint, stages)
    prov = provenance(data_dir) if checkpoint != "base" else {}  # base saw none of our data
    if checkpoint != "base" and (teacher := teachers(prov)) is not None:
        lineage_tags["teacher"] = teacher
    for k, v in version_tags(cfg, checkpoint, metrics, lineage_tags, prom).items():
        client.set_model_version_tag(cfg.model_name, version, k, redact(v))
    used = stage_params(checkpoint, stages)
    # dvc.lock holds params as written (a base_url with user:token@): the card and tags are redacted
    card = redact(model_card(cfg.model_name, version, checkpoint, metrics, prom.verdict,
                             f"{prom.deploy_reason}. In its evaluation scope ({prom.scope}): {prom.reason}",
                             lineage_tags, used, prov, logged=cfg.log_model))
    description = card if len(card) <= DESCRIPTION_LIMIT else \
        card[:DESCRIPTION_LIMIT - 100] + "\n\n… (truncated: full card in the run's model_card.md)\n"
    client.update_model_version(cfg.model_name, version, description=description)
    log.text(card, "model_card.md")
    log.json(used, "lineage/params.json")


def move_aliases(client, model_name: str, version: str, prom: Promotion) -> None:
    """`champion` on the new version only if it beat the deployed champion on paired evidence
    (else `challenger`); the scope's `champion-<scope>` on it if it is the best of its scope."""
    client.set_registered_model_alias(model_name, prom.verdict, version)
    if prom.alias == CHAMPION:
        client.set_registered_model_alias(model_name, scope_alias(prom.scope), version)


def register(params: Params, checkpoint: str, model_dir: Path, metrics_file: Path, predictions_file: Path,
             out: Path, log: tracking.StageLog, data_dir: Path | None = None) -> dict:
    """Register the evaluated checkpoint as a new version, promote it if earned, and write the
    record (name, version, alias, reason, previous champion, scope, paired stats) to `out`."""
    from mlflow import MlflowClient

    cfg = params.register_
    metrics, predictions = read_evaluation(model_dir, metrics_file, predictions_file)
    if not log.active:
        raise RuntimeError("register needs MLflow tracking (TUTORLOOP_TRACKING is off)")
    client = MlflowClient()
    weights = digest(model_dir)
    # one registration of this model at a time on this machine: two stages must not both "beat"
    # the same champion (read the champion, decide, move the aliases: one step under the lock)
    with registry_lock(cfg.model_name):
        return _register(client, cfg, checkpoint, model_dir, metrics_file, predictions_file, out, log, data_dir,
                         metrics, predictions, weights)


def registry_lock(model_name: str):
    """A lock per tracking store and model on this machine (a file beside the user's cache)."""
    import hashlib
    import os

    from filelock import FileLock

    key = hashlib.sha1(f"{tracking.tracking_uri()}|{model_name}".encode()).hexdigest()[:16]
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tutorloop" / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"register-{key}.lock"))


def _register(client, cfg: Register, checkpoint: str, model_dir: Path, metrics_file: Path, predictions_file: Path,
              out: Path, log: tracking.StageLog, data_dir: Path | None, metrics: dict, predictions: list[dict],
              weights: str) -> dict:
    """register's steps under the registry lock: decide, make or finish the version, aliases last."""
    if control_round(checkpoint) is not None:   # evaluated and registered like a round, never promoted
        scope = eval_scope(metrics.get("protocol", ""), correctness(predictions))
        prom = Promotion(checkpoint, "a control is never a champion candidate", {}, scope,
                         deploy_reason=f"{checkpoint}: round {control_round(checkpoint)}'s training on the teacher's "
                                       "solutions alone, registered as evidence, never deployed",
                         champion_before=version_by_alias(client, cfg.model_name, CHAMPION))
    else:
        prom = promote(client, cfg, metrics, correctness(predictions), weights)
    evaluation = digest(metrics_file, predictions_file)   # the same weights scored anew are a new registration
    own = own_version(client, cfg.model_name, weights, checkpoint, evaluation)
    if own is not None and own.tags.get(RECORD_TAG):   # registered to the end before: the same answer again
        record = json.loads(own.tags[RECORD_TAG])
        write_json(record, out)
        log.tags({"registered_version": own.version, "alias": record["alias"], "registration": "replayed"})
        return record
    log.artifact(predictions_file, "eval")  # the paired evidence a later challenger is tested against
    # a stop after the version was made (before its aliases): this run finishes that version
    version = own.version if own is not None else create_version(client, cfg, model_dir, log).version
    client.set_model_version_tag(cfg.model_name, version, WEIGHTS_TAG, weights)
    client.set_model_version_tag(cfg.model_name, version, "round", checkpoint)
    client.set_model_version_tag(cfg.model_name, version, EVALUATION_TAG, evaluation)
    describe(client, cfg, version, checkpoint, metrics, prom, log, data_dir)
    if control_round(checkpoint) is None and _moved(client, cfg.model_name, prom):
        # another machine moved `champion` meanwhile (a shared tracking server: the lock is per
        # machine): decide again against the one that holds it now
        prom = promote(client, cfg, metrics, correctness(predictions), weights)
        describe(client, cfg, version, checkpoint, metrics, prom, log, data_dir)
    move_aliases(client, cfg.model_name, version, prom)   # last: a stop before here leaves no alias moved
    record = _record(cfg.model_name, version, prom)
    client.set_model_version_tag(cfg.model_name, version, RECORD_TAG, json.dumps(record))   # done: replayable
    write_json(record, out)
    log.tags({"registered_version": version, "alias": prom.verdict})
    return record


def _moved(client, model_name: str, prom: Promotion) -> bool:
    """Whether `champion` is no longer where `prom` read it."""
    now, before = version_by_alias(client, model_name, CHAMPION), prom.champion_before
    return (now.version if now else None) != (before.version if before else None)


RECORD_TAG = "registration.record"   # set last: a version without it is a registration a stop cut short
EVALUATION_TAG = "registration.evaluation"   # the digest of the metrics and predictions it was registered on


def own_version(client, name: str, weights: str, checkpoint: str, evaluation: str):
    """The version an earlier attempt of this registration made (same weights, checkpoint and
    evaluation), or None: a re-run finishes it instead of adding a version."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None   # no registered model yet
    mine = [v for v in found if v.tags.get(WEIGHTS_TAG) == weights and v.tags.get("round") == checkpoint
            and v.tags.get(EVALUATION_TAG) == evaluation]
    return max(mine, key=lambda v: int(v.version)) if mine else None


def _record(name: str, version: str, prom: Promotion) -> dict:
    """What register writes to registry/<checkpoint>.json (and keeps on the version)."""
    before = prom.champion_before
    return {"name": name, "version": version, "alias": prom.verdict, "reason": prom.deploy_reason,
            "champion": version if prom.deploy else before.version if before else None,
            "previous_champion": before.version if before else None,
            "scope": prom.scope, "scope_alias": scope_alias(prom.scope) if prom.alias == CHAMPION else None,
            "scope_reason": prom.reason, "previous_scope_champion": prom.previous.version if prom.previous else None,
            **prom.stats}
