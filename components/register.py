"""Stage `register@<checkpoint>`: add the checkpoint to the MLflow registry, promote if earned.

The model is logged with `mlflow.transformers` (so ``models:/tutor@champion`` loads offline) and
registered as a new version of `register.model_name`, tagged with its lineage (round, parent,
git commit, dvc.lock hashes of its weights, training data and parent model) and described by a
generated model card (metrics with CIs, provenance counts, the params of every stage that made
it). Promotion is earned: the `champion` alias moves to the new version only if it beats the
current champion on the same held-out problems — exact one-sided McNemar test, p < alpha — and
otherwise it gets `challenger` with tags saying why (p-value, both accuracies). The per-problem
verdicts are logged with each version so the next challenger can be paired against them.

Champions are scoped by evaluation: verdicts pair only under the same protocol (prompt, decoding,
few-shot; `evaluate.protocol`) on the same problem ids, so each scope — a hash of both — has its
own alias `champion-<scope>`, and `champion` names the champion of the scope the project evaluates
with now. A new protocol or test set starts a new scope (its first version is that scope's
champion, and the loop's next versions are paired against it) instead of freezing promotion: with
one global champion from an old protocol, nothing could ever be paired with it again. The
alternative, re-scoring the old champion under the new protocol, would make this stage generate
with a model DVC may have overwritten (log_model: false) and import evaluate's code; per-scope
champions need neither, and a protocol that comes back finds its champion where it left it.

Inputs: besides its declared deps, the stage reads dvc.lock — the hashes and params of the stages
that made the checkpoint (lineage tags and the model card). dvc.lock cannot be a dep (DVC rewrites
it after every stage, this one included); what is read from it are entries of this checkpoint's
upstream stages, which change when those stages re-run, and so does the checkpoint it depends on.
Params are taken from those entries — the values each stage actually ran with — not from
params.yaml, of which this stage reads only `register`.

Nothing is registered unless the checkpoint and a non-empty evaluation exist; DVC runs this stage
only after `evaluate` (and, upstream, `decontaminate`) succeeded.

    python -m components.register 1 models/round-1 metrics/1.json eval/1/predictions.jsonl registry/1.json --data data/clean
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import yaml


from components import tracking
from components.config import Params, Register, load_params, redact
from components.data import DataError, read_jsonl, write_json
from components.modeling import require_checkpoint
from components.stats import mcnemar_p

CHAMPION, CHALLENGER = "champion", "challenger"
PREDICTIONS = "eval/predictions.jsonl"  # artifact path of the verdicts a version was registered with


def producing_stage(checkpoint: str) -> str:
    return {"base": "base_model", "0": "sft"}.get(checkpoint, f"dpo@{checkpoint}")


def lock_stages(lock_file: Path = Path("dvc.lock")) -> dict:
    """The stage entries of dvc.lock ({} before DVC has run anything, or outside DVC)."""
    return (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}) if lock_file.exists() else {}


def locked_params(stages: dict, stage: str) -> dict:
    """The params.yaml values `stage` last ran with, as dvc.lock recorded them."""
    return (stages.get(stage, {}).get("params") or {}).get("params.yaml", {})


def parent(checkpoint: str, stages: dict) -> str | None:
    """The checkpoint this one was trained from: base for SFT, rounds.k.prev as dpo@k ran with."""
    if checkpoint in ("base", "0"):
        return None if checkpoint == "base" else "base"
    prev = locked_params(stages, f"dpo@{checkpoint}").get(f"rounds.{checkpoint}.prev")
    return None if prev is None else str(prev)


def lineage(checkpoint: str, stages: dict) -> dict[str, str]:
    """Hashes from dvc.lock of what made this checkpoint: its weights, data and parent model."""
    tags = {"round": checkpoint, "git_commit": tracking.git_commit()}
    if (up := parent(checkpoint, stages)) is not None:
        tags["parent"] = up
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


def decide(new: dict[str, bool], champion: dict[str, bool] | None, cfg: Register,
           has_champion: bool | None = None) -> tuple[str, str, dict]:
    """(alias, reason, stats): `champion` only for a version that beats the champion on evidence.

    `new` and `champion` map problem id -> correct. With `test: mcnemar` the two are compared on
    the problems both were evaluated on (paired), and the new version must solve more of the
    discordant ones with p < alpha; with `test: accuracy`, a strictly higher accuracy suffices.
    """
    acc = sum(new.values()) / len(new)
    if has_champion is None:
        has_champion = champion is not None
    if not has_champion:
        return CHAMPION, f"first version: accuracy {acc:.4f}", {"accuracy": acc}
    if champion is None:
        # A champion exists but its verdicts cannot be paired (none logged, or another protocol):
        # no evidence, so no promotion. Never treat a lost artifact as "first version".
        return CHALLENGER, "champion's per-problem verdicts unavailable under this protocol: no paired evidence", {"accuracy": acc}
    common = sorted(set(new) & set(champion))
    if not common:
        return CHALLENGER, "no problems in common with the champion's evaluation: no paired evidence", {"accuracy": acc}
    new_acc = sum(new[i] for i in common) / len(common)
    old_acc = sum(champion[i] for i in common) / len(common)
    b = sum(champion[i] and not new[i] for i in common)
    c = sum(new[i] and not champion[i] for i in common)
    p = mcnemar_p(b, c)
    stats = {"accuracy": acc, "paired_n": len(common), "only_new_right": c, "only_champion_right": b,
             "p_value": p, "champion_accuracy": old_acc}
    summary = (f"accuracy {new_acc:.4f} vs champion {old_acc:.4f} on {len(common)} shared problems; "
               f"only new right {c}, only champion right {b}, McNemar exact one-sided p={p:.4g}")
    if cfg.test == "accuracy":
        better = new_acc > old_acc
    else:
        better = c > b and p < cfg.alpha
        summary += f", alpha {cfg.alpha}"
    return (CHAMPION if better else CHALLENGER), summary, stats


def correctness(predictions: list[dict]) -> dict[str, bool]:
    return {p["id"]: bool(p["correct"]) for p in predictions}


def eval_scope(protocol: str, ids) -> str:
    """Which verdicts can be paired: the evaluation protocol and the exact set of problem ids."""
    key = json.dumps({"protocol": protocol, "ids": sorted(ids)})
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def scope_alias(scope: str) -> str:
    return f"{CHAMPION}-{scope}"


def champion_predictions(client, version, scope: str) -> dict[str, bool] | None:
    """The per-problem verdicts the champion was registered with (an artifact of its run), if it
    was evaluated in the same scope (protocol and problem ids) as the new version."""
    import mlflow

    if version.tags.get("eval.scope") != scope:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=PREDICTIONS,
                                                       dst_path=tmp)
            return correctness(read_jsonl(path))
    except Exception:  # noqa: BLE001 - a champion logged without predictions gives no paired evidence
        return None


def stage_params(checkpoint: str, stages: dict) -> dict:
    """The params every stage that made this checkpoint ran with (base -> SFT -> each round in its
    chain), from dvc.lock; a stage DVC has no record of is left out."""
    names = ["base_model"]
    if checkpoint != "base":
        names += ["generate", "decontaminate", "sft"]
        chain, key = [], checkpoint
        while key not in ("0", None):
            chain.append(key)
            key = parent(key, stages)
        for key in reversed(chain):
            prev = parent(key, stages)
            names += ([f"followup@{prev}"] if prev not in ("0", None) else []) + \
                [f"practice@{key}", f"feedback@{key}", f"dpo@{key}"]
    return {name: locked_params(stages, name) for name in names if name in stages}


def provenance(data_dir: Path | None) -> dict:
    """Counts of the training data by teacher, agent path and family, plus decontamination stats."""
    if data_dir is None:
        return {}
    counts: dict[str, dict[str, int]] = {}
    for split in ("sft", "practice"):
        path = data_dir / f"{split}.jsonl"
        if not path.exists():
            continue
        rows = read_jsonl(path, allow_empty=True)
        prov = [r.get("provenance", {}) for r in rows]
        counts[split] = {"records": len(rows),
                         **{f"teacher:{k}": v for k, v in Counter(f"{p.get('teacher')}/{p.get('model')}" for p in prov).items()},
                         **{f"agent:{k}": v for k, v in Counter(p.get("agent_path") for p in prov).items()},
                         **{f"family:{k}": v for k, v in sorted(Counter(r.get("family") for r in rows).items())}}
    decon = data_dir / "decontamination.json"
    if decon.exists():
        counts["decontamination"] = json.loads(decon.read_text())
    return counts


def model_card(name: str, version: str, checkpoint: str, metrics: dict, alias: str, reason: str,
               lineage_tags: dict, params_used: dict, prov: dict, logged: bool = True) -> str:
    """A markdown model card: what the model is, how good, how it was made, how to load it."""
    label = {"base": "the untrained base student", "0": "round 0 (SFT)"}.get(checkpoint, f"preference round {checkpoint}")
    lines = [f"# {name} v{version}: {label}", "",
             f"**Promotion:** `{alias}` — {reason}", "",
             "## Evaluation (greedy pass@1)", "",
             "Calculator: " + ("**on** (the engine computed every `<<expr=` the model opened)"
                               if metrics.get("calculator") else "off (the model's own arithmetic)"), "",
             "| set | accuracy | 95% CI | n |", "| --- | --- | --- | --- |",
             f"| held-out synthetic | {metrics['accuracy']:.1%} | {metrics['ci95_low']:.1%}–{metrics['ci95_high']:.1%} | {metrics['n']} |"]
    if "gsm8k" in metrics:
        g = metrics["gsm8k"]
        lines.append(f"| GSM8K | {g['accuracy']:.1%} | {g['ci95_low']:.1%}–{g['ci95_high']:.1%} | {g['n']} |")
    if metrics.get("family"):
        lines += ["", "Held-out accuracy by problem family: " +
                  ", ".join(f"{k} {v:.0%}" for k, v in metrics["family"].items())]
    lines += ["", "## Lineage", "", "| key | value |", "| --- | --- |"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(lineage_tags.items())]
    if prov:
        lines += ["", "## Training data provenance", "", "```json", json.dumps(prov, indent=2), "```"]
    lines += ["", "## Parameters of every stage that made it", "", "```json",
              json.dumps(params_used, indent=2, default=str), "```",
              "", "## Load", ""]
    if logged:
        lines += ["```python", "import mlflow",
                  f'components = mlflow.transformers.load_model("models:/{name}/{version}", return_type="components")',
                  "```"]
    else:
        lines += ["Weights were not logged (register.log_model: false): the version points at the DVC-owned "
                  "folder; restore it with `dvc checkout` at the commit in the lineage tags."]
    return "\n".join(lines) + "\n"


def run(params: Params, checkpoint: str, model_dir: Path, metrics_file: Path, predictions_file: Path,
        out: Path, log: tracking.StageLog, data_dir: Path | None = None) -> dict:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    cfg = params.register_
    require_checkpoint(model_dir)
    if not metrics_file.exists():
        raise FileNotFoundError(f"no evaluation at {metrics_file}: refusing to register")
    metrics = json.loads(metrics_file.read_text())
    if not metrics.get("n"):
        raise DataError(f"{metrics_file}: evaluated on 0 problems: refusing to register")
    predictions = read_jsonl(predictions_file, required=("id", "correct"))
    if len(predictions) != metrics["n"]:
        raise DataError(f"{predictions_file}: has {len(predictions)} predictions, metrics say {metrics['n']}")
    if not log.active:
        raise RuntimeError("register needs MLflow tracking (TUTORLOOP_TRACKING is off)")

    client = MlflowClient()
    verdicts = correctness(predictions)
    scope = eval_scope(metrics.get("protocol", ""), verdicts)
    try:
        champ = client.get_model_version_by_alias(cfg.model_name, scope_alias(scope))
    except MlflowException:
        champ = None
    champ_preds = champion_predictions(client, champ, scope) if champ else None
    alias, reason, stats = decide(verdicts, champ_preds, cfg, has_champion=champ is not None)
    if champ is None:
        reason += (f" under evaluation scope {scope} (protocol {metrics.get('protocol', '') or 'unknown'}, "
                   f"{len(verdicts)} problems): the first version evaluated this way")

    log.artifact(predictions_file, "eval")  # the paired evidence a later challenger is tested against
    if cfg.log_model:
        version = mlflow.register_model(log_transformers_model(model_dir), cfg.model_name)
    else:
        client.create_registered_model(cfg.model_name) if not client.search_registered_models(
            f"name='{cfg.model_name}'") else None
        version = client.create_model_version(cfg.model_name, source=model_dir.resolve().as_uri(),
                                              run_id=log.run_id)
    stages = lock_stages()
    lineage_tags = lineage(checkpoint, stages)
    prov = provenance(data_dir) if checkpoint != "base" else {}  # base saw none of our data
    if checkpoint != "base" and prov.get("sft"):
        lineage_tags["teacher"] = ",".join(k.split(":", 1)[1] for k in prov["sft"] if k.startswith("teacher:"))
    tags = {f"lineage.{k}": v for k, v in lineage_tags.items()}
    tags.update({f"metric.{cfg.metric}": f"{metrics[cfg.metric]:.6f}", "promotion": alias,
                 "promotion.reason": reason, "round": checkpoint,
                 "eval.protocol": metrics.get("protocol", ""), "eval.scope": scope})
    if "p_value" in stats:
        tags["promotion.p_value"] = f"{stats['p_value']:.6g}"
    if "gsm8k" in metrics:
        tags["metric.gsm8k_accuracy"] = f"{metrics['gsm8k']['accuracy']:.6f}"
    for k, v in tags.items():
        client.set_model_version_tag(cfg.model_name, version.version, k, redact(v))
    used = stage_params(checkpoint, stages)
    # dvc.lock holds params as written (a base_url with user:token@): the card and tags are redacted
    card = redact(model_card(cfg.model_name, version.version, checkpoint, metrics, alias, reason, lineage_tags,
                             used, prov, logged=cfg.log_model))
    # Registry descriptions are VARCHAR(5000) on SQL backends: the full card is an artifact.
    description = card if len(card) <= 5000 else card[:4900] + "\n\n… (truncated: full card in the run's model_card.md)\n"
    client.update_model_version(cfg.model_name, version.version, description=description)
    log.text(card, "model_card.md")
    log.json(used, "lineage/params.json")
    client.set_registered_model_alias(cfg.model_name, alias, version.version)
    # `champion` follows the champion of the scope evaluated now (this version, or the one it lost to)
    scope_champion = version.version if alias == CHAMPION else champ.version
    client.set_registered_model_alias(cfg.model_name, scope_alias(scope), scope_champion)
    client.set_registered_model_alias(cfg.model_name, CHAMPION, scope_champion)
    record = {"name": cfg.model_name, "version": version.version, "alias": alias, "reason": reason,
              "previous_champion": champ.version if champ else None, "scope": scope, **stats}
    write_json(record, out)
    log.tags({"registered_version": version.version, "alias": alias})
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("model", type=Path)
    parser.add_argument("metrics", type=Path)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="training data dir, for provenance counts")
    args = parser.parse_args()
    # Logging a local model needs no hub; without this, mlflow.transformers spends ~25 s retrying
    # to fetch a model card and license for a repo id that does not exist.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    params = load_params()
    with tracking.stage_run("register", params.register_.model_dump(), round_key=args.checkpoint) as log:
        record = run(params, args.checkpoint, args.model, args.metrics, args.predictions, args.out, log,
                     data_dir=args.data)
        log.metrics({k: v for k, v in record.items() if isinstance(v, (int, float))} | {"version": int(record["version"])})


if __name__ == "__main__":
    from components.entry import run_main

    run_main(main)  # bad input: one line, exit 2; SIGTERM/SIGINT: MLflow run KILLED (see entry.py)
