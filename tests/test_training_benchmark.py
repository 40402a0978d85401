"""benchmarks/training.py on a tiny model: both sides train on the same batches and the ratio is theirs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import training  # noqa: E402
from conftest import tiny_params  # noqa: E402


def test_trainer_and_raw_loop_are_timed_on_the_same_tokens(tiny_model_dir, tmp_path, capsys, monkeypatch):
    timed = {}
    for name in ("time_trainer", "time_raw_loop"):   # the real timers, their seconds kept
        real = getattr(training, name)
        monkeypatch.setattr(training, name, lambda *a, _real=real, _name=name, **k: timed.setdefault(_name, _real(*a, **k)))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(tiny_model_dir)))
    figures = training.main([str(tiny_model_dir), "--params", str(params), "--steps", "2", "--warmup", "1",
                             "--batch", "2", "--length", "256", "--precision", "float32"])
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "float32" in out.splitlines()[0]
    assert figures["tokens"] > 2 * 2 * 10          # two timed steps of two real examples each
    # each side's figure is the one token count over that side's own timed seconds
    assert figures["trainer_tokens_per_second"] == pytest.approx(figures["tokens"] / timed["time_trainer"])
    assert figures["raw_tokens_per_second"] == pytest.approx(figures["tokens"] / timed["time_raw_loop"])
    assert figures["ratio"] == pytest.approx(timed["time_raw_loop"] / timed["time_trainer"])
    assert "ratio trainer / raw" in out
