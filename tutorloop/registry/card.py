"""The model card: a markdown description of a registered version — what the model is, how good
(held-out and GSM8K accuracy with 95% CIs, per family), how it was made (lineage tags, training
data provenance, the params of every stage that made it) and how to load it.

The caller redacts it: dvc.lock holds params as written (a base_url with user:token@).
"""

from __future__ import annotations

import json


def model_card(name: str, version: str, checkpoint: str, metrics: dict, alias: str, reason: str,
               lineage_tags: dict, params_used: dict, prov: dict, logged: bool = True) -> str:
    """A markdown model card: what the model is, how good, how it was made, how to load it."""
    label = {"base": "the untrained base student", "0": "round 0 (SFT)"}.get(checkpoint, f"preference round {checkpoint}")
    if checkpoint.startswith("control-"):
        label = f"the control of round {checkpoint.split('-', 1)[1]} (its training on the teacher's solutions alone)"
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
        lines += [("Weights were not logged (register.log_model: false): the version points at the DVC-owned "
                   "folder; restore it with `dvc checkout` at the commit in the lineage tags.")]
    return "\n".join(lines) + "\n"
