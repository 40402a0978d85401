"""`tutorloop harness`: lm-evaluation-harness's GSM8K task, offline, against `tutorloop serve`.

The served model's text is scripted (the engine's token choice is replaced; its real forward runs)
so the harness's scores are known in advance: the model always answers `#### 7`, and 3 of the 5
test problems have the answer 7 — strict-match must be 3/5, and it must be logged to MLflow."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("lm_eval")


def _gsm8k(path, answers):
    rows = [{"question": f"Tom has {a} apples and buys 0 more. How many apples does he have?",
             "answer": f"He has {a} apples.\n#### {a}"} for a in answers]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_offline_task_is_the_harness_task_on_local_rows(tmp_path):
    from tutorloop.serving import harness

    data = _gsm8k(tmp_path / "gsm8k.jsonl", [7, 7, 3, 7, 5, 11, 12, 13])
    name = harness.write_task("gsm8k", data, limit=5, fewshot_pool=2, folder=tmp_path / "task")
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((tmp_path / "task" / f"{name}.yaml").read_text())))
    assert cfg["dataset_path"] == "json" and "tag" not in cfg and cfg["num_fewshot"] == 5
    assert cfg["filter_list"][0]["name"] == "strict-match"          # the harness's own filters, unchanged
    test = [json.loads(x) for x in (tmp_path / "task" / "test.jsonl").read_text().splitlines()]
    shots = [json.loads(x) for x in (tmp_path / "task" / "fewshot.jsonl").read_text().splitlines()]
    assert [r["answer"][-2:].strip() for r in test] == ["7", "7", "3", "7", "5"]   # the first `limit` rows
    assert [r["answer"][-2:].strip() for r in shots] == ["11", "12"]               # examples never test rows
    with pytest.raises(ValueError, match="--task"):
        harness.task_config("mmlu", data, data)


def test_harness_scores_the_served_model_and_logs_to_mlflow(tiny_model_dir, tmp_path, monkeypatch):
    from tutorloop import cli
    from tutorloop.inference import engine

    monkeypatch.delenv("TUTORLOOP_TRACKING", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    data = _gsm8k(tmp_path / "gsm8k.jsonl", [7, 3, 7, 5, 7, 11, 12, 13])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    script = tok(" He has 7.\n#### 7\n\nQuestion:", add_special_tokens=False)["input_ids"]
    real = engine._Run.choose

    def choose(self, logits, rows=None):
        real(self, logits, rows)
        n = self.n_gen if rows is None else self.n_gen[rows]
        return torch.tensor(script)[n.clamp(max=len(script) - 1)]

    monkeypatch.setattr(engine._Run, "choose", choose)
    result = CliRunner().invoke(cli.app, ["harness", "--model", str(tiny_model_dir), "--data", str(data),
                                          "--limit", "5", "--fewshot", "1", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "strict-match 60.0%" in result.output, result.output
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("tutorloop").experiment_id])
    assert run.data.metrics["harness.strict_match"] == pytest.approx(0.6)
    assert run.data.metrics["harness.n"] == 5 and run.data.params["task"] == "gsm8k"
    assert run.info.status == "FINISHED"
