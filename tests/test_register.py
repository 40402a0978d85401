"""Registration: lineage tags, champion only when earned, nothing registered on bad input."""

import json

import pytest

from components import register, tracking
from components.register import decide


def test_decide_promotes_only_strict_improvements():
    assert decide(0.3, None)[0] == "champion"
    assert decide(0.4, 0.3)[0] == "champion"
    assert decide(0.3, 0.3)[0] == "challenger"
    assert decide(0.2, 0.3) == ("challenger", "accuracy 0.2000 <= champion 0.3000")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUTORLOOP_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    return tmp_path


def write_metrics(path, acc, n=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accuracy": acc, "n": n, "correct": int(acc * n)}))


def test_register_versions_aliases_and_lineage(store, tiny_model_dir, params_factory):
    import mlflow
    from mlflow import MlflowClient

    params = params_factory(rounds=2)
    params = params.model_copy(update={"register_": params.register_.model_copy(update={"log_model": False})})
    for key, acc in [("base", 0.1), ("0", 0.5), ("1", 0.4), ("2", 0.6)]:
        write_metrics(store / f"metrics/{key}.json", acc)
        with tracking.stage_run("register", {}, round_key=key) as log:
            register.run(params, key, tiny_model_dir, store / f"metrics/{key}.json",
                         store / f"registry/{key}.json", log)
    client = MlflowClient(tracking.tracking_uri())
    versions = {v.tags["round"]: v for v in client.search_model_versions("name='tutor'")}
    assert set(versions) == {"base", "0", "1", "2"}
    assert client.get_model_version_by_alias("tutor", "champion").tags["round"] == "2"
    assert versions["1"].tags["promotion"] == "challenger"
    assert "<= champion 0.5000" in versions["1"].tags["promotion.reason"]
    assert versions["2"].tags["lineage.parent"] == "1"
    assert versions["0"].tags["lineage.parent"] == "base"
    assert "lineage.git_commit" in versions["2"].tags
    assert json.loads((store / "registry/2.json").read_text())["alias"] == "champion"
    assert mlflow.get_tracking_uri().endswith("mlflow.db")


def test_register_logs_a_loadable_transformers_model(store, tiny_model_dir, params_factory):
    import mlflow

    params = params_factory()
    write_metrics(store / "metrics/0.json", 0.5)
    with tracking.stage_run("register", {}, round_key="0") as log:
        register.run(params, "0", tiny_model_dir, store / "metrics/0.json", store / "registry/0.json", log)
    components = mlflow.transformers.load_model("models:/tutor@champion", return_type="components")
    assert components["model"].config.vocab_size == len(components["tokenizer"])


def test_register_refuses_without_evaluation(store, tiny_model_dir, params_factory):
    params = params_factory()
    with tracking.stage_run("register", {}, round_key="0") as log:
        with pytest.raises(FileNotFoundError, match="refusing to register"):
            register.run(params, "0", tiny_model_dir, store / "metrics/0.json", store / "r.json", log)
        write_metrics(store / "metrics/0.json", 0.0, n=0)
        with pytest.raises(ValueError, match="0 problems"):
            register.run(params, "0", tiny_model_dir, store / "metrics/0.json", store / "r.json", log)
        with pytest.raises(FileNotFoundError, match="no model checkpoint"):
            register.run(params, "0", store / "nope", store / "metrics/0.json", store / "r.json", log)
    from mlflow import MlflowClient

    assert MlflowClient(tracking.tracking_uri()).search_model_versions("name='tutor'") == []
