"""The flows run what dvc.yaml declares: stage order per round comes from DVC's graph."""

import subprocess
import sys

import yaml
from conftest import copy_project
from support import ROOT

from flows.pipeline import AFTER_LOOP, plan


def test_plan_of_the_repo_pipeline():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    rounds, controls = raw["rounds"], raw["controls"]
    got = plan(ROOT, rounds)
    assert got["0"] == ["base_model", "inputs", "generate", "decontaminate", "evaluate@base", "register@base", "sft",
                        "evaluate@0", "register@0"]
    for key in rounds:
        # a round's control trains, is scored and registered in its round's flow, after the round
        control = ["control@" + key, f"evaluate@control-{key}", f"register@control-{key}"] if key in controls else []
        assert got[key] == [f"{s}@{key}" for s in ("practice", "feedback", "followup", "preference", "evaluate",
                                                   "register")] + control
    assert got[AFTER_LOOP] == ["report"]
    planned = [s for v in got.values() for s in v]
    assert len(planned) == len(set(planned)) == 9 + 6 * len(rounds) + 3 * len(controls) + 1  # every stage, once


def test_a_stage_added_to_dvc_yaml_runs_in_its_round_after_what_it_needs(tmp_path):
    project = copy_project(tmp_path)
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    stages = dvc["stages"]
    # a new per-round audit of the pairs, declared before the stage that makes them
    dvc["stages"] = {"audit": {"foreach": "${rounds}", "do": {
        "cmd": "python -c pass", "deps": ["data/round-${key}/pairs.jsonl"],
        "outs": ["data/round-${key}/audit.json"]}}, **stages}
    # and a summary over every round's audit, which must wait for the loop
    dvc["stages"]["summary"] = {"cmd": "python -c pass", "deps": ["data/round-2/audit.json"], "outs": ["summary.json"]}
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    got = plan(project, ["1", "2"])
    r1 = got["1"]
    assert "audit@1" in r1 and r1.index("feedback@1") < r1.index("audit@1")
    assert sorted(got[AFTER_LOOP]) == ["report", "summary"]
    assert "audit@1" not in got["0"] and "summary" not in got["2"]
