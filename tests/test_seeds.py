"""`tutorloop seeds`: one round (and its control) under N seeds from the same checkpoint, the
paired test pooled over seeds with the decision rule printed before any run."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tutorloop.cli import app
from tutorloop.cli import loop as cli
from tests.conftest import ROOT
from tutorloop.data.jsonl import write_jsonl


def test_seeds_dry_run_prints_one_experiment_per_seed_with_shifted_seeds():
    result = CliRunner().invoke(app, ["seeds", "quick", "--round", "1", "--seeds", "3", "--dry-run",
                                          "--project", str(ROOT)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "p < 0.05" in lines[0] and "3 seeds" in lines[0]          # the rule, before the runs
    runs = [ln for ln in lines if ln.startswith("dvc exp run")]
    assert [r.split(" -n ")[1].split()[0] for r in runs] == ["quick-r1-seed0", "quick-r1-seed1", "quick-r1-seed2"]
    for i, run in enumerate(runs):
        assert f"rounds.1.practice.seed={1 + 1000 * i}" in run and f"rounds.1.preference.seed={1 + 1000 * i}" in run
        assert run.endswith("evaluate@0 evaluate@1 evaluate@control-1")   # params.yaml's control of round 1
        assert "rounds.1.preference.method=rft" in run                     # the recipe itself


def test_seeds_refuses_a_round_the_recipe_lacks():
    result = CliRunner().invoke(app, ["seeds", "quick", "--round", "7", "--dry-run", "--project", str(ROOT)])
    assert result.exit_code == 2 and "--round '7'" in result.output


def test_pooled_comparisons_pair_the_round_with_its_start_and_its_control(tmp_path):
    from tutorloop.eval.report import pooled_comparisons

    for i in range(3):   # the round solves 20 more than SFT in each seed, its control 10 more
        for name, solved in (("0", 40), ("1", 60), ("control-1", 50)):
            write_jsonl(tmp_path / f"seed{i}" / f"{name}.jsonl",
                        [{"id": f"q{j}", "correct": j < solved} for j in range(100)])
    got = {(r["arm"], r["baseline"]): r for r in pooled_comparisons(tmp_path, 3, ["0", "1", "control-1"])}
    assert set(got) == {("1", "0"), ("1", "control-1"), ("control-1", "0")}
    assert (got[("1", "0")]["ahead"], got[("1", "0")]["behind"]) == (20, 0) and got[("1", "0")]["p"] < 1e-5
    assert (got[("1", "control-1")]["ahead"], got[("1", "control-1")]["behind"]) == (10, 0)
    assert got[("control-1", "0")]["arm_accuracy"] == 0.5
    cli._print_pooled(tmp_path, 3, ["0", "1", "control-1"])
    saved = json.loads((tmp_path / "pooled.json").read_text())
    assert [r["arm"] for r in saved] == ["1", "1", "control-1"]


def test_extra_scores_of_a_seed_invariant_checkpoint_are_reused_not_recomputed(tmp_path, monkeypatch):
    import subprocess

    def no_run(*a, **k):
        raise AssertionError("scored again")

    monkeypatch.setattr(subprocess, "run", no_run)
    first, later = tmp_path / "seed0" / "0-extra", tmp_path / "seed1"
    write_jsonl(first / "predictions.jsonl", [{"id": "extra-777-0", "correct": True}])
    write_jsonl(later / "0.jsonl", [{"id": "q0", "correct": False}])
    cli._score_extra(tmp_path, "0", "models/sft", tmp_path / "extra.jsonl", later, first)
    rows = [json.loads(line) for line in (later / "0.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "extra-777-0"]          # held-out, then the reused extra set
    with __import__("pytest").raises(AssertionError, match="scored again"):   # the arm itself is always scored
        cli._score_extra(tmp_path, "1", "models/round-1", tmp_path / "extra.jsonl", later, None)


def test_a_recipes_dry_run_prints_a_command_the_shell_runs_as_is():
    """Pasted into a shell, the printed command must pass DVC the same -S values: unquoted,
    `controls.1="0"` reached DVC as the integer 0 and validation refused it."""
    import shlex

    result = CliRunner().invoke(app, ["recipe", "asdiv", "--dry-run", "--project", str(ROOT)])
    assert result.exit_code == 0, result.output
    args = shlex.split(result.stdout.strip())
    assert args[:3] == ["dvc", "exp", "run"]
    assert 'controls.1="0"' in args and "generate.seeds.path=../shared/data/asdiv/asdiv.jsonl" in args


def test_each_seed_runs_on_params_yaml_as_the_seed_before_left_it(tmp_path, monkeypatch):
    """DVC applies each experiment's values to the workspace, so a key the recipe adds (the ASDiv
    recipe's controls.2) exists from the second seed on: a single `+key` (append) would be refused
    then, `++key` (add or override) is not, and every seed must still get the recipe's value."""
    import shutil
    import subprocess

    import yaml

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    sets, real_run = [], subprocess.run

    def dvc_exp_run(cmd, *args, cwd, **kwargs):   # what `dvc exp run` leaves behind: params applied, evaluations
        if "exp" not in cmd:
            return real_run(cmd, *args, cwd=cwd, **kwargs)
        cwd, args = Path(cwd), cmd[cmd.index("exp") + 2:]
        pairs = [args[i + 1] for i, a in enumerate(args) if a == "-S"]
        sets.append(pairs)
        params = yaml.safe_load((cwd / "params.yaml").read_text())
        for pair in pairs:
            key, value = pair.split("=", 1)
            *path, last = key.lstrip("+").split(".")
            node = params
            for k in path:
                node = node.setdefault(k, {})
            assert not (key.startswith("+") and not key.startswith("++") and last in node), f"DVC: cannot append {key}"
            node[last] = yaml.safe_load(value)
        (cwd / "params.yaml").write_text(yaml.safe_dump(params))
        for target in (a for a in args if a.startswith("evaluate@")):
            write_jsonl(cwd / "eval" / target.split("@")[1] / "predictions.jsonl",
                        [{"id": f"q{i}", "correct": i % 2 == 0} for i in range(4)])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", dvc_exp_run)
    result = CliRunner().invoke(app, ["seeds", "asdiv", "--round", "2", "--seeds", "3", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(sets) == 3
    assert any(p.startswith("++controls.2=") for p in sets[0])
    for later in sets[1:]:
        assert not any(p.startswith("+") for p in later) and 'controls.2="1"' in later
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["controls"] == {"1": "0", "2": "1"}
    # a dry run applies nothing, so every printed command must run pasted in order: no single `+`
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    dry = CliRunner().invoke(app, ["seeds", "asdiv", "--round", "2", "--dry-run", "--project", str(tmp_path)])
    printed = [a for ln in dry.stdout.splitlines() if ln.startswith("dvc exp run") for a in ln.split()]
    assert "'++controls.2=\"1\"'" in printed and not [a for a in printed if a.startswith(("+c", "'+c"))]


def test_a_knob_an_earlier_experiment_left_in_params_yaml_is_named_before_the_run(tmp_path):
    """DVC applies an experiment's values to the workspace: the next recipe or seeds run inherits
    any it does not set, so both name those keys (and not the ones they set) before running."""
    import shutil
    import subprocess

    import yaml

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for cmd in (["init", "-q"], ["add", "params.yaml"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True)
    runner = CliRunner()
    clean = runner.invoke(app, ["recipe", "quick", "--dry-run", "--project", str(tmp_path)])
    assert clean.exit_code == 0 and "rides along" not in clean.stderr
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["evaluate"]["limit"] = 7                              # left by an earlier experiment
    params["rounds"]["1"]["preference"]["learning_rate"] = 3e-4  # also left, but the recipe sets it
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for args in (["recipe", "quick", "--dry-run"], ["seeds", "quick", "--dry-run"]):
        result = runner.invoke(app, [*args, "--project", str(tmp_path)])
        assert result.exit_code == 0, result.output
        said = [ln for ln in result.stderr.splitlines() if "rides along" in ln]
        assert said == ["tutorloop: params.yaml evaluate.limit: 7 (committed: 0) is not set by this run and rides along"], said



def test_seeds_count_from_the_committed_seeds_not_those_an_earlier_seeds_run_left(tmp_path):
    """An earlier `seeds` run leaves its last seed (2001) applied in params.yaml: the next arm must
    still run the recipe's own seed, +1000, +2000, and not call its own seed keys leftovers."""
    import shutil
    import subprocess

    import yaml

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for cmd in (["init", "-q"], ["add", "params.yaml"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["rounds"]["1"]["practice"]["seed"] = params["rounds"]["1"]["preference"]["seed"] = 2001
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["seeds", "quick", "--dry-run", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    runs = [ln for ln in result.stdout.splitlines() if ln.startswith("dvc exp run")]
    for i, run in enumerate(runs):
        assert f"rounds.1.practice.seed={1 + 1000 * i}" in run and f"rounds.1.preference.seed={1 + 1000 * i}" in run
    assert "rides along" not in result.stderr
