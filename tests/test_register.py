"""Registration: paired promotion, lineage tags, model card, nothing registered on bad input."""

import json

import pytest

from components import register, tracking
from components.config import Register
from components.data import write_jsonl
from components.register import decide
from components.stats import mcnemar_p

MCNEMAR = Register(test="mcnemar", alpha=0.05)


def verdicts(pattern: str, prefix: str = "p") -> dict[str, bool]:
    return {f"{prefix}{i}": ch == "1" for i, ch in enumerate(pattern)}


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(1 / 32)
    assert mcnemar_p(2, 8) == pytest.approx(56 / 1024)  # P(X >= 8 | n=10)
    assert mcnemar_p(5, 5) > 0.5


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


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUTORLOOP_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    return tmp_path


def write_eval(root, key, pattern):
    n = len(pattern)
    acc = pattern.count("1") / n
    (root / "metrics").mkdir(exist_ok=True)
    (root / f"metrics/{key}.json").write_text(json.dumps(
        {"accuracy": acc, "n": n, "correct": pattern.count("1"), "ci95_low": 0.0, "ci95_high": 1.0,
         "family": {"ages": acc}}))
    write_jsonl(root / f"eval/{key}/predictions.jsonl",
                [{"id": f"t{i}", "correct": ch == "1"} for i, ch in enumerate(pattern)])


def do_register(params, store, key, model_dir):
    with tracking.stage_run("register", {}, round_key=key) as log:
        return register.run(params, key, model_dir, store / f"metrics/{key}.json",
                            store / f"eval/{key}/predictions.jsonl", store / f"registry/{key}.json", log)


def test_register_versions_aliases_lineage_and_card(store, tiny_model_dir, params_factory):
    from mlflow import MlflowClient

    params = params_factory(rounds=2)
    params = params.model_copy(update={"register_": params.register_.model_copy(update={"log_model": False})})
    patterns = {"base": "0" * 40,                      # champion (first)
                "0": "1" * 20 + "0" * 20,              # 20 newly solved: promoted
                "1": "1" * 21 + "0" * 19,              # +1: not significant -> challenger
                "2": "1" * 34 + "0" * 6}               # +14 vs round 0: promoted
    for key, pattern in patterns.items():
        write_eval(store, key, pattern)
        do_register(params, store, key, tiny_model_dir)
    client = MlflowClient(tracking.tracking_uri())
    versions = {v.tags["round"]: v for v in client.search_model_versions("name='tutor'")}
    assert set(versions) == {"base", "0", "1", "2"}
    assert client.get_model_version_by_alias("tutor", "champion").tags["round"] == "2"
    assert client.get_model_version_by_alias("tutor", "challenger").tags["round"] == "1"
    assert versions["1"].tags["promotion"] == "challenger"
    assert float(versions["1"].tags["promotion.p_value"]) > 0.05
    assert "0.5250 vs champion 0.5000" in versions["1"].tags["promotion.reason"]
    assert versions["2"].tags["lineage.parent"] == "1" and versions["0"].tags["lineage.parent"] == "base"
    assert "lineage.git_commit" in versions["2"].tags
    card = client.get_model_version("tutor", versions["2"].version).description
    assert card.startswith("# tutor v4: preference round 2") and "round 1" in card and "McNemar" in card
    assert json.loads((store / "registry/2.json").read_text())["alias"] == "champion"


def test_other_protocol_is_not_paired(store, tiny_model_dir, params_factory):
    params = params_factory()
    params = params.model_copy(update={"register_": params.register_.model_copy(update={"log_model": False})})
    write_eval(store, "0", "0" * 20)
    do_register(params, store, "0", tiny_model_dir)
    write_eval(store, "1", "1" * 20)
    m = json.loads((store / "metrics/1.json").read_text())
    (store / "metrics/1.json").write_text(json.dumps({**m, "protocol": "fewshot-8"}))
    record = do_register(params, store, "1", tiny_model_dir)
    assert record["alias"] == "challenger" and "protocol" in record["reason"]


def test_register_logs_a_loadable_transformers_model(store, tiny_model_dir, params_factory):
    import mlflow

    params = params_factory()
    write_eval(store, "0", "0110")
    do_register(params, store, "0", tiny_model_dir)
    components = mlflow.transformers.load_model("models:/tutor@champion", return_type="components")
    assert components["model"].config.vocab_size == len(components["tokenizer"])


def test_register_refuses_without_evaluation(store, tiny_model_dir, params_factory):
    from mlflow import MlflowClient

    params = params_factory()
    with pytest.raises(FileNotFoundError, match="refusing to register"):
        do_register(params, store, "0", tiny_model_dir)
    write_eval(store, "0", "01")
    (store / "metrics/0.json").write_text(json.dumps({"accuracy": 0.0, "n": 0}))
    with pytest.raises(ValueError, match="0 problems"):
        do_register(params, store, "0", tiny_model_dir)
    write_eval(store, "0", "01")
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        do_register(params, store, "0", store / "nope")
    assert MlflowClient(tracking.tracking_uri()).search_model_versions("name='tutor'") == []
