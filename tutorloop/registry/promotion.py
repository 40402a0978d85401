"""Earned promotion: the `champion` alias moves to a new version only on paired evidence.

A new version becomes champion only if it beats the current champion on the same held-out
problems — exact one-sided McNemar test, p < `register.alpha` (or, `register.test: accuracy`,
a strictly higher accuracy) — and otherwise it is `challenger`, with tags saying why. The
per-problem verdicts are logged with each version (artifact `PREDICTIONS`) so the next
challenger can be paired against them.

Champions are scoped by evaluation: verdicts pair only under the same protocol (prompt, decoding,
few-shot; `tutorloop.eval.protocol`) on the same problem ids, so each scope — a hash of both — has its
own alias `champion-<scope>`, and `champion` names the champion of the scope the project evaluates
with now. A new protocol or test set starts a new scope (its first version is that scope's
champion, and the loop's next versions are paired against it) instead of freezing promotion: with
one global champion from an old protocol, nothing could ever be paired with it again. The
alternative, re-scoring the old champion under the new protocol, would make registration generate
with a model DVC may have overwritten (log_model: false) and import evaluation's code; per-scope
champions need neither, and a protocol that comes back finds its champion where it left it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile

from tutorloop.config import Register
from tutorloop.data.jsonl import read_jsonl
from tutorloop.eval.stats import mcnemar_p

CHAMPION, CHALLENGER = "champion", "challenger"
PREDICTIONS = "eval/predictions.jsonl"  # artifact path of the verdicts a version was registered with


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
    """Problem id -> correct, from evaluate's predictions."""
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


def scope_champion(client, model_name: str, scope: str):
    """The version holding this scope's champion alias, or None (the scope's first version)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, scope_alias(scope))
    except MlflowException:
        return None
