"""`tutorloop serve` and `tutorloop harness` refuse what they cannot do at start, in one line
with exit code 2, creating nothing: a model the engine cannot serve (it would leave every request
unanswered), a `models:/` name with no registry here, a malformed or too-short `--data`."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from tutorloop.cli import app


def _one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def sliding_window_model(tiny_model_dir, tmp_path):
    """A tiny Mistral with a sliding window: the engine's slot cache does not cover it."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             sliding_window=16, max_position_embeddings=256,
                                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    out = tmp_path / "mistral"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def test_serve_refuses_a_model_the_engine_cannot_serve(sliding_window_model, tmp_path, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served a model no request would be answered by"))
    result = CliRunner().invoke(app, ["serve", "--model", str(sliding_window_model), "--precision", "float32"])
    line = _one_error_line(result)
    assert "MistralForCausalLM" in line and "--backend vllm" in line


@pytest.mark.parametrize("command", ["serve", "harness"])
def test_the_default_registry_model_without_a_registry_is_one_line_and_creates_nothing(command, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a\n#### {i}"}) + "\n" for i in range(9)))
    extra = ["--data", str(data), "--limit", "4", "--project", str(tmp_path)] if command == "harness" else []
    line = _one_error_line(CliRunner().invoke(app, [command, *extra]))
    assert "models:/tutor@champion" in line and "no MLflow registry" in line and "make demo" in line
    assert list(tmp_path.iterdir()) == [data], "nothing is created (no empty mlflow.db)"


@pytest.mark.parametrize("content, says", [
    ('{"question": "q", "answer": "a\\n#### 1"}\nnot json\n', "gsm8k.jsonl:2: not valid JSON"),
    ('{"question": "q"}\n', "gsm8k.jsonl:1: a GSM8K row needs string fields question and answer"),
    ('{"question": "q", "answer": "no final answer"}\n', "gsm8k.jsonl:1: answer has no '#### N'"),
    ('{"question": "q", "answer": "a\\n#### 1"}\n' * 3, "3 rows, need more than --limit 200"),
])
def test_harness_with_bad_data_fails_before_the_model_loads(content, says, tiny_model_dir, tmp_path, monkeypatch):
    from tutorloop.serving import server

    monkeypatch.setattr(server, "load_served", lambda *a, **k: pytest.fail("loaded the model before checking --data"))
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(content)
    result = CliRunner().invoke(app, ["harness", "--model", str(tiny_model_dir), "--data", str(data),
                                      "--project", str(tmp_path)])
    assert says in _one_error_line(result)
    assert not (tmp_path / "mlflow.db").exists()


def test_harness_refuses_rows_the_workspace_trained_on(tiny_model_dir, tmp_path, monkeypatch):
    """The GSM8K recipe's seeds come from GSM8K train, as the harness's default rows do: rows the
    workspace's SFT or practice set holds are refused (a score on training problems is not one);
    the workspace's own held-out rows (question, solution with `#### N`) are scored."""
    from tutorloop.serving import server

    monkeypatch.setattr(server, "load_served", lambda *a, **k: pytest.fail("loaded the model"))
    rows = [{"question": f"Tom has {i} apples. How many?", "solution": f"He has {i}.\n#### {i}", "answer": str(i)}
            for i in range(8)]
    (tmp_path / "data" / "clean").mkdir(parents=True)
    (tmp_path / "data" / "clean" / "sft.jsonl").write_text(json.dumps(rows[1]) + "\n")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["harness", "--model", str(tiny_model_dir), "--data", str(data), "--limit", "4",
                                      "--project", str(tmp_path)])
    assert "1 of the 4 rows to score are problems this workspace trained on" in _one_error_line(result)
    from tutorloop.serving import harness

    kept = harness.read_data(data, 4)                                   # the loop's own format is read
    harness.refuse_trained(kept[4:], 4, tmp_path)                       # untrained rows pass
    assert kept[0]["answer"].endswith("#### 0")
