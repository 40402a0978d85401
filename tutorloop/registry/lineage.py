"""Lineage of a checkpoint: what made it, read from dvc.lock and the training data.

dvc.lock holds, for every stage DVC ran, the hashes of its deps and outs and the params.yaml
values it ran with. The registry reads the entries of the stages upstream of the checkpoint
(base_model, generate, decontaminate, sft, and for each round k of its chain `practice@k`,
`feedback@k`, `preference@k` and the `followup@` of the round before) for its lineage tags and
model card: the params each stage actually ran with, not today's params.yaml. dvc.lock cannot
be a DVC dep of `register` (DVC rewrites it after every stage, that one included); the entries
read change whenever those stages re-run, and so does the checkpoint `register` depends on.

The preference stage was called `dpo@k` before 2026-12 (params `rounds.k.dpo`); a dvc.lock
written since then names it `preference@k`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

from tutorloop.config import control_round
from tutorloop.data.jsonl import read_jsonl
from tutorloop.runtime import tracking


def producing_stage(checkpoint: str) -> str:
    """The dvc.yaml stage whose output is this checkpoint's weights."""
    if (k := control_round(checkpoint)) is not None:
        return f"control@{k}"
    return {"base": "base_model", "0": "sft"}.get(checkpoint, f"preference@{checkpoint}")


def lock_stages(lock_file: Path = Path("dvc.lock")) -> dict:
    """The stage entries of dvc.lock ({} before DVC has run anything, or outside DVC)."""
    return (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}) if lock_file.exists() else {}


def locked_params(stages: dict, stage: str) -> dict:
    """The params.yaml values `stage` last ran with, as dvc.lock recorded them."""
    return (stages.get(stage, {}).get("params") or {}).get("params.yaml", {})


def parent(checkpoint: str, stages: dict) -> str | None:
    """The checkpoint this one was trained from: base for SFT, rounds.k.prev as preference@k ran with."""
    if checkpoint in ("base", "0"):
        return None if checkpoint == "base" else "base"
    key = control_round(checkpoint) or checkpoint   # a control starts where its round does
    prev = locked_params(stages, producing_stage(checkpoint)).get(f"rounds.{key}.prev")
    return None if prev is None else str(prev)


def lineage(checkpoint: str, stages: dict) -> dict[str, str]:
    """Hashes from dvc.lock of what made this checkpoint: its weights, data and parent model."""
    tags = {"round": checkpoint, "git_commit": tracking.git_commit()}
    if (up := parent(checkpoint, stages)) is not None:
        tags["parent"] = up
    entry = stages.get(producing_stage(checkpoint), {})
    for out in entry.get("outs", []):
        tags[f"dvc.out.{out['path']}"] = out.get("md5", "")
    for dep in entry.get("deps", []):   # the data and models it was made from, not its code
        if not dep["path"].startswith(("components/", "tutorloop/")) and not dep["path"].endswith(".py"):
            tags[f"dvc.dep.{dep['path']}"] = dep.get("md5", "")
    return tags


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
            prev, k = parent(key, stages), control_round(key) or key
            names += ([f"followup@{prev}"] if prev not in ("0", None) else []) + \
                [f"practice@{k}", f"feedback@{k}", producing_stage(key)]
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


def teachers(prov: dict) -> str | None:
    """The teachers of the SFT data, comma-separated (None without SFT provenance)."""
    if not prov.get("sft"):
        return None
    return ",".join(k.split(":", 1)[1] for k in prov["sft"] if k.startswith("teacher:"))
