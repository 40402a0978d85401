"""Earned promotion: the `champion` alias moves to a new version only on paired evidence.

A new version is compared with a champion on the same held-out problems — exact one-sided
McNemar test, p < `register.alpha` (or, `register.test: accuracy`, a strictly higher accuracy).
The per-problem verdicts are logged with each version (artifact `PREDICTIONS`) so the next
challenger can be paired against them.

Two aliases, two questions:
- `champion-<scope>`: the best version *of one evaluation scope* (a hash of the protocol — prompt,
  decoding, few-shot, numerics; `tutorloop.eval.protocol` — and the exact problem ids). Verdicts
  pair only within a scope, so the first version evaluated a new way is that scope's champion
  (there is nothing to beat), and later ones are paired against it.
- `champion`: the version to deploy. It moves only to a version that beat the current `champion`
  itself on paired evidence, so it never follows a new scope to an unchecked model (changing
  `evaluate.max_new_tokens` re-registers the untrained base first). With no comparable evidence
  — the champion was scored another way — it stays where it is, and the new scope's best is
  recorded as `champion-<scope>`. The very first version of a registry is `champion`: there is
  no other, and so is a version with the champion's own weights (tag `model.digest`): the
  champion re-scored. After a protocol change the loop re-registers every checkpoint, so the
  champion's checkpoint carries `champion` into the new scope, and later rounds are paired
  against it there; or move the alias by hand.

A champion whose verdicts cannot be *read* (a tracking server that fails) is an error that fails
the stage, so a re-run promotes; only a champion that never logged verdicts is "no evidence".
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
WEIGHTS_TAG = "model.digest"            # the content hash of a version's checkpoint folder


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
    was evaluated in the same scope (protocol and problem ids) as the new version; None when it
    was not, or never logged them. A store that fails to answer raises (the stage fails and a
    re-run promotes): that is not an absence of evidence."""
    import mlflow

    if version.tags.get("eval.scope") != scope:
        return None
    folder = PREDICTIONS.rsplit("/", 1)[0]
    if PREDICTIONS not in {a.path for a in client.list_artifacts(version.run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=PREDICTIONS, dst_path=tmp)
        return correctness(read_jsonl(path))


def version_by_alias(client, model_name: str, alias: str):
    """The version holding `alias`, or None (no such alias yet, or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def scope_champion(client, model_name: str, scope: str):
    """The version holding this scope's champion alias, or None (the scope's first version)."""
    return version_by_alias(client, model_name, scope_alias(scope))


def deploy_verdict(new: dict[str, bool], champion, champion_verdicts: dict[str, bool] | None,
                   cfg: Register, weights: str = "") -> tuple[bool, str]:
    """(whether `champion` moves to the new version, why): only on paired evidence against the
    current champion itself; the first version of a registry takes it (there is no other), and
    so does a version with the champion's very weights (`weights`: their content hash) — the
    champion re-scored, which is how it enters a new evaluation scope."""
    if champion is None:
        return True, "the registry's first version"
    if weights and champion.tags.get(WEIGHTS_TAG) == weights:
        return True, (f"the same weights as champion v{champion.version}, scored under this evaluation "
                      f"scope: the champion's verdicts here, for the next challenger to be paired with")
    alias, reason, _ = decide(new, champion_verdicts, cfg, has_champion=True)
    if champion_verdicts is None:
        return False, (f"champion stays v{champion.version}: it was scored under another evaluation scope "
                       f"({champion.tags.get('eval.scope', 'unknown')}), so there is no paired evidence")
    if alias == CHAMPION:
        return True, f"beat champion v{champion.version}: {reason}"
    return False, f"champion stays v{champion.version}: {reason}"
