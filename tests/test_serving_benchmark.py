"""benchmarks/serving.py on a tiny model: served and in-process runs decode the same prompts, and
the served greedy texts equal the in-process ones (what makes the throughput ratio a fair one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import serving  # noqa: E402


def test_served_and_in_process_decode_the_same_requests(tiny_model_dir, capsys):
    figures = serving.main([str(tiny_model_dir), "--requests", "6", "--rows", "8", "--new-tokens", "12",
                            "--precision", "float32"])
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "float32" in out.splitlines()[0]
    assert figures["identical"] == 6 and figures["engine_calls"] >= 1
    # the same work on both sides (what makes the ratio a fair one): every greedy text, every token
    assert figures["served_tokens"] == figures["in_process_tokens"] > 0
