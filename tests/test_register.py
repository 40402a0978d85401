"""Registration: paired promotion, lineage tags, model card, nothing registered on bad input."""

import json
import shutil

import pytest
import yaml
from support import write_eval

from tutorloop.config import Register
from tutorloop.registry.promotion import decide
from tutorloop.registry.version import register
from tutorloop.runtime import tracking

MCNEMAR = Register(test="mcnemar", alpha=0.05)


def verdicts(pattern: str, prefix: str = "p") -> dict[str, bool]:
    return {f"{prefix}{i}": ch == "1" for i, ch in enumerate(pattern)}


def test_first_version_is_champion():
    assert decide(verdicts("0101"), None, MCNEMAR)[0] == "champion"


def test_significant_improvement_is_promoted():
    champ = verdicts("0" * 30 + "1" * 10)
    new = verdicts("1" * 12 + "0" * 18 + "1" * 10)  # 12 newly solved, none lost
    alias, reason, stats = decide(new, champ, MCNEMAR)
    assert alias == "champion" and stats["p_value"] < 0.001
    assert "McNemar" in reason


def test_higher_but_not_significant_stays_challenger():
    champ = verdicts("0" * 20 + "1" * 20)
    new = verdicts("11" + "0" * 18 + "0" + "1" * 19)  # +2 -1: higher accuracy, p ~ 0.5
    alias, reason, stats = decide(new, champ, MCNEMAR)
    assert alias == "challenger" and stats["p_value"] > 0.05
    assert "0.5250 vs champion 0.5000" in reason
    assert decide(new, champ, Register(test="accuracy"))[0] == "champion"


def test_champion_without_verdicts_is_never_replaced_by_default():
    alias, reason, _ = decide(verdicts("1111"), None, MCNEMAR, has_champion=True)
    assert alias == "challenger" and "no paired evidence" in reason


def test_no_shared_problems_is_no_evidence():
    alias, reason, _ = decide(verdicts("11", "a"), verdicts("00", "b"), MCNEMAR)
    assert alias == "challenger" and "no problems in common" in reason


def write_lock(root, rounds: dict[str, str]):
    """A dvc.lock as DVC writes it: the stages that made each checkpoint, with their params."""
    stages = {"base_model": {"params": {"params.yaml": {"base_model": {"source": "tiny"}}},
                             "outs": [{"path": "models/base", "md5": "b.dir"}]},
              "sft": {"params": {"params.yaml": {"sft": {"learning_rate": 0.001}}},
                      "deps": [{"path": "data/clean/sft.jsonl", "md5": "s1"}],
                      "outs": [{"path": "models/round-0", "md5": "r0.dir"}]}}
    for key, prev in rounds.items():
        stages[f"preference@{key}"] = {"params": {"params.yaml": {f"rounds.{key}.prev": prev,
                                                                  f"rounds.{key}.preference": {"beta": 0.1 * int(key)}}},
                                       "deps": [{"path": f"data/round-{key}/pairs.jsonl", "md5": f"p{key}"}],
                                       "outs": [{"path": f"models/round-{key}", "md5": f"r{key}.dir"}]}
        stages[f"practice@{key}"] = {"params": {"params.yaml": {f"rounds.{key}.practice": {"samples": 4}}}}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))


def do_register(params, root, key, model_dir):
    """Register checkpoint `key`; each key gets its own copy of `model_dir` with a marker file, so
    checkpoints differ in content (as trained ones do) and one key's content stays the same."""
    if model_dir.is_dir():
        copy = root / "checkpoints" / key
        if not copy.exists():
            shutil.copytree(model_dir, copy)
            (copy / "checkpoint.txt").write_text(key)
        model_dir = copy
    with tracking.stage_run("register", {}, round_key=key) as log:
        return register(params, key, model_dir, root / f"metrics/{key}.json",
                        root / f"eval/{key}/predictions.jsonl", root / f"registry/{key}.json", log)



def test_register_versions_aliases_lineage_and_card(tracked_cwd, tiny_model_dir, params_factory):
    from mlflow import MlflowClient

    params = params_factory(rounds=2)
    params = params.model_copy(update={"register_": params.register_.model_copy(update={"log_model": False})})
    write_lock(tracked_cwd, {"1": "0", "2": "1"})
    patterns = {"base": "0" * 40,                      # champion (first)
                "0": "1" * 20 + "0" * 20,              # 20 newly solved: promoted
                "1": "1" * 21 + "0" * 19,              # +1: not significant -> challenger
                "2": "1" * 34 + "0" * 6}               # +14 vs round 0: promoted
    for key, pattern in patterns.items():
        write_eval(tracked_cwd, key, pattern)
        do_register(params, tracked_cwd, key, tiny_model_dir)
    client = MlflowClient(tracking.tracking_uri())
    versions = {v.tags["round"]: v for v in client.search_model_versions("name='tutor'")}
    assert set(versions) == {"base", "0", "1", "2"}
    assert client.get_model_version_by_alias("tutor", "champion").tags["round"] == "2"
    assert client.get_model_version_by_alias("tutor", "challenger").tags["round"] == "1"
    assert versions["1"].tags["promotion"] == "challenger"
    assert float(versions["1"].tags["promotion.p_value"]) > 0.05
    assert "0.5250 vs champion 0.5000" in versions["1"].tags["promotion.reason"]
    assert versions["2"].tags["lineage.parent"] == "1" and versions["0"].tags["lineage.parent"] == "base"
    assert "lineage.parent" not in versions["base"].tags and "lineage.git_commit" in versions["2"].tags
    assert versions["2"].tags["lineage.dvc.out.models/round-2"] == "r2.dir"
    assert versions["2"].tags["lineage.dvc.dep.data/round-2/pairs.jsonl"] == "p2"
    card = client.get_model_version("tutor", versions["2"].version).description
    assert card.startswith("# tutor v4: preference round 2") and "McNemar" in card
    # the card's params are the ones dvc.lock says each stage of the chain ran with
    used = json.loads(card.split("## Parameters of every stage that made it")[1].split("```json")[1].split("```")[0])
    assert list(used) == ["base_model", "sft", "practice@1", "preference@1", "practice@2", "preference@2"]
    assert used["preference@2"]["rounds.2.preference"] == {"beta": 0.2}
    assert json.loads((tracked_cwd / "registry/2.json").read_text())["alias"] == "champion"


def test_a_control_is_registered_with_its_lineage_but_never_promoted(tracked_cwd, tiny_model_dir, params_factory):
    """control-k (round k on the teacher's solutions alone) is evidence, not a candidate: even far
    better than the champion it gets its own alias, and `champion` stays."""
    from mlflow import MlflowClient

    params = params_factory(rounds=1)
    params = params.model_copy(update={"register_": params.register_.model_copy(update={"log_model": False})})
    write_lock(tracked_cwd, {"1": "0"})
    lock = yaml.safe_load((tracked_cwd / "dvc.lock").read_text())
    lock["stages"]["control@1"] = {"params": {"params.yaml": {"rounds.1.prev": "0", "rounds.1.preference": {"seed": 1}}},
                                   "deps": [{"path": "data/round-1/rft.jsonl", "md5": "rft1"}],
                                   "outs": [{"path": "models/control-1", "md5": "c1.dir"}]}
    (tracked_cwd / "dvc.lock").write_text(yaml.safe_dump(lock))
    write_eval(tracked_cwd, "0", "1" * 10 + "0" * 30)
    assert do_register(params, tracked_cwd, "0", tiny_model_dir)["alias"] == "champion"
    write_eval(tracked_cwd, "control-1", "1" * 40)           # +30 over the champion: would be promoted as a round
    record = do_register(params, tracked_cwd, "control-1", tiny_model_dir)
    client = MlflowClient(tracking.tracking_uri())
    assert record["alias"] == "control-1" and "never" in record["reason"]
    assert client.get_model_version_by_alias("tutor", "champion").tags["round"] == "0"
    version = client.get_model_version_by_alias("tutor", "control-1")
    assert version.tags["lineage.parent"] == "0" and version.tags["lineage.dvc.out.models/control-1"] == "c1.dir"
    card = client.get_model_version("tutor", version.version).description
    used = json.loads(card.split("## Parameters of every stage that made it")[1].split("```json")[1].split("```")[0])
    assert list(used) == ["base_model", "sft", "practice@1", "control@1"]


def test_champion_moves_only_on_paired_evidence_and_scopes_keep_their_best(tracked_cwd, tiny_model_dir, params_factory):
    """A new protocol or test set starts a scope with its own best (`champion-<scope>`), but the
    deployable `champion` never follows it to an unchecked model: register@base runs first after
    a protocol change, and the untrained base must not become what users deploy."""
    from mlflow import MlflowClient

    params = params_factory(rounds=2)
    params = params.model_copy(update={"register_": params.register_.model_copy(update={"log_model": False})})
    client = MlflowClient(tracking.tracking_uri())

    def holder(alias="champion"):
        return client.get_model_version_by_alias("tutor", alias).tags["round"]


    write_eval(tracked_cwd, "base", "0" * 40, protocol="zero-shot")
    assert do_register(params, tracked_cwd, "base", tiny_model_dir)["alias"] == "champion"   # the registry's first
    write_eval(tracked_cwd, "0", "1" * 30 + "0" * 10, protocol="zero-shot")
    assert do_register(params, tracked_cwd, "0", tiny_model_dir)["alias"] == "champion" and holder() == "0"
    # the protocol changes (say max_new_tokens): base is registered first in the new scope
    write_eval(tracked_cwd, "base", "0" * 40, protocol="fewshot-8")
    rebased = do_register(params, tracked_cwd, "base", tiny_model_dir)
    assert rebased["alias"] == "challenger" and holder() == "0"          # champion stays: no evidence
    assert rebased["scope_alias"] and holder(rebased["scope_alias"]) == "base"   # the scope's best so far
    assert "no paired evidence" in rebased["reason"] and rebased["champion"] == rebased["previous_champion"]
    # a trained round under the new protocol beats the scope's champion, but not the deployed one:
    # it was never paired with it
    write_eval(tracked_cwd, "1", "1" * 30 + "0" * 10, protocol="fewshot-8")
    r1 = do_register(params, tracked_cwd, "1", tiny_model_dir)
    assert r1["alias"] == "challenger" and r1["scope_alias"] and holder(r1["scope_alias"]) == "1"
    assert r1["paired_n"] == 40 and r1["p_value"] < 1e-5 and holder() == "0"
    # the deployed champion's own checkpoint scored under the new protocol carries `champion` there
    write_eval(tracked_cwd, "0", "1" * 30 + "0" * 10, protocol="fewshot-8")
    rescored = do_register(params, tracked_cwd, "0", tiny_model_dir)
    assert rescored["alias"] == "champion" and "same weights" in rescored["reason"] and holder() == "0"
    write_eval(tracked_cwd, "2", "1" * 40, protocol="fewshot-8")
    r2 = do_register(params, tracked_cwd, "2", tiny_model_dir)
    # +10 vs the champion's own verdicts under this scope: p = 2^-10
    assert r2["alias"] == "champion" and holder() == "2" and "beat champion" in r2["reason"]
    # a regenerated test set: a scope of its own, and no move
    write_eval(tracked_cwd, "3", "1" * 40, protocol="fewshot-8", prefix="u")
    fresh = do_register(params, tracked_cwd, "3", tiny_model_dir)
    assert fresh["alias"] == "challenger" and fresh["previous_scope_champion"] is None and holder() == "2"
    scopes = {k for k in client.get_registered_model("tutor").aliases if k.startswith("champion-")}
    assert len(scopes) == 3


def test_a_store_error_while_reading_the_champion_fails_the_stage(tracked_cwd, tiny_model_dir, params_factory,
                                                                 monkeypatch):
    """A transient tracking error is not "no evidence": register must fail (DVC then re-runs it
    and it promotes), not record a version that can never be promoted."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    params = params_factory()
    params = params.model_copy(update={"register_": params.register_.model_copy(update={"log_model": False})})
    write_eval(tracked_cwd, "base", "0" * 40)
    do_register(params, tracked_cwd, "base", tiny_model_dir)
    write_eval(tracked_cwd, "0", "1" * 30 + "0" * 10)

    def flaky(**kw):
        raise MlflowException("API request to endpoint /api/2.0/mlflow-artifacts failed with error code 503")

    real = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", flaky)
    with pytest.raises(MlflowException, match="503"):
        do_register(params, tracked_cwd, "0", tiny_model_dir)
    client = MlflowClient(tracking.tracking_uri())
    assert len(client.search_model_versions("name='tutor'")) == 1       # nothing half-registered
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", real)
    assert do_register(params, tracked_cwd, "0", tiny_model_dir)["alias"] == "champion"   # the re-run promotes


def test_register_logs_a_loadable_transformers_model(tracked_cwd, tiny_model_dir, params_factory):
    import mlflow

    params = params_factory()
    write_eval(tracked_cwd, "0", "0110")
    do_register(params, tracked_cwd, "0", tiny_model_dir)
    components = mlflow.transformers.load_model("models:/tutor@champion", return_type="components")
    assert components["model"].config.vocab_size == len(components["tokenizer"])


def test_register_refuses_without_evaluation(tracked_cwd, tiny_model_dir, params_factory):
    from mlflow import MlflowClient

    params = params_factory()
    with pytest.raises(FileNotFoundError, match="refusing to register"):
        do_register(params, tracked_cwd, "0", tiny_model_dir)
    write_eval(tracked_cwd, "0", "01")
    (tracked_cwd / "metrics/0.json").write_text(json.dumps({"accuracy": 0.0, "n": 0}))
    with pytest.raises(ValueError, match="0 problems"):
        do_register(params, tracked_cwd, "0", tiny_model_dir)
    write_eval(tracked_cwd, "0", "01")
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        do_register(params, tracked_cwd, "0", tracked_cwd / "nope")
    assert MlflowClient(tracking.tracking_uri()).search_model_versions("name='tutor'") == []


def test_a_registration_cut_short_is_finished_by_its_rerun_not_duplicated(tracked_cwd, tiny_model_dir,
                                                                          params_factory, monkeypatch):
    """A stop after the version is made but before its aliases: the re-run finds its own version
    (same weights, same checkpoint), finishes it and moves the aliases; a re-run of a finished
    registration replays its record and adds nothing."""
    from mlflow import MlflowClient

    from tutorloop.registry import version as reg

    params = params_factory(rounds=1)
    params = params.model_copy(update={"register_": params.register_.model_copy(update={"log_model": False})})
    write_lock(tracked_cwd, {"1": "0"})
    write_eval(tracked_cwd, "base", "0" * 40)
    real = reg.move_aliases

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(reg, "move_aliases", stopped)
    with pytest.raises(KeyboardInterrupt):
        do_register(params, tracked_cwd, "base", tiny_model_dir)
    client = MlflowClient(tracking.tracking_uri())
    [cut] = client.search_model_versions("name='tutor'")
    assert reg.RECORD_TAG not in cut.tags and not client.get_registered_model("tutor").aliases
    monkeypatch.setattr(reg, "move_aliases", real)
    first = do_register(params, tracked_cwd, "base", tiny_model_dir)
    again = do_register(params, tracked_cwd, "base", tiny_model_dir)
    versions = client.search_model_versions("name='tutor'")
    assert len(versions) == 1 and first["version"] == again["version"] == cut.version
    assert client.get_model_version_by_alias("tutor", "champion").version == cut.version
    assert again == first and json.loads(versions[0].tags[reg.RECORD_TAG]) == first


RACE = """
import json, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[1] + "/tests", sys.argv[1]]
from support import write_eval
from test_register import do_register
from conftest import tiny_params
from tutorloop.config import validate
from tutorloop.registry import version as reg

root, key, model = Path.cwd(), sys.argv[2], Path(sys.argv[3])
raw = tiny_params(model, rounds=2)
raw["register"]["log_model"] = False
params = validate(raw)
real = reg.promote

def slow(*a, **k):   # both read the champion, then think a while: the window a lock must close
    got = real(*a, **k)
    time.sleep(1.5)
    return got

reg.promote = slow
print(json.dumps(do_register(params, root, key, model)))
"""


def test_two_registrations_at_once_do_not_both_beat_the_same_champion(tracked_cwd, tiny_model_dir, params_factory):
    """Rounds 1 and 2, each far better than the champion (base), register at the same moment in
    two processes: the second to decide is paired with the first (the champion by then), not with
    base; without the lock both would "beat base" and the last alias write would win."""
    import subprocess
    import sys

    from support import ROOT

    params = params_factory(rounds=2)
    params = params.model_copy(update={"register_": params.register_.model_copy(update={"log_model": False})})
    write_lock(tracked_cwd, {"1": "0", "2": "1"})
    write_eval(tracked_cwd, "base", "0" * 40)
    base = do_register(params, tracked_cwd, "base", tiny_model_dir)
    write_eval(tracked_cwd, "1", "1" * 30 + "0" * 10)
    write_eval(tracked_cwd, "2", "1" * 32 + "0" * 8)
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(ROOT), key, str(tiny_model_dir)], cwd=tracked_cwd,
                              stdout=subprocess.PIPE, text=True) for key in ("1", "2")]
    records = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    previous = sorted(r["previous_champion"] for r in records)
    assert previous[0] == base["version"] and previous[1] != base["version"], records   # one after the other
