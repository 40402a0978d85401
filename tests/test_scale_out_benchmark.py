"""benchmarks/scale_out.py on the tiny model: each side's figure is its own run's, the ratio theirs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import scale_out  # noqa: E402


def test_n_processes_and_n_servers_are_timed_against_one(tiny_model_dir, monkeypatch, capsys):
    seen = []
    real_sft, real_served = scale_out.sft_seconds_per_update, scale_out.served_tokens_per_second
    monkeypatch.setattr(scale_out, "sft_seconds_per_update",
                        lambda model, n, *a: seen.append(("train", n, real_sft(model, n, *a))) or seen[-1][2])
    monkeypatch.setattr(scale_out, "served_tokens_per_second",
                        lambda model, n, *a: seen.append(("serve", n, real_served(model, n, *a))) or seen[-1][2])
    train = scale_out.main(["train", str(tiny_model_dir), "--updates", "2"])
    serve = scale_out.main(["serve", str(tiny_model_dir), "--requests", "4", "--new-tokens", "8"])
    assert [(what, n) for what, n, _ in seen] == [("train", 1), ("train", 2), ("serve", 1), ("serve", 2)]
    figures = {(what, n): value for what, n, value in seen}
    assert train["seconds_per_update_1"] == figures[("train", 1)] > 0
    assert train["ratio"] == pytest.approx(figures[("train", 2)] / figures[("train", 1)])
    assert serve["tokens_per_second_n"] == figures[("serve", 2)] > 0
    assert serve["ratio"] == pytest.approx(figures[("serve", 2)] / figures[("serve", 1)])
    assert capsys.readouterr().out.startswith("machine: ")
