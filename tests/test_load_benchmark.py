"""benchmarks/load.py on the tiny model, briefly: every request of the abusive mix is answered
with a status (none hangs), malformed and over-size ones are refused, and the figures add up."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import load  # noqa: E402
from support import free_port  # noqa: E402


def test_a_short_abusive_load_leaves_no_request_unanswered(tiny_model_dir, capsys):
    figures = load.main([str(tiny_model_dir), "--clients", "12", "--seconds", "8", "--port", str(free_port()),
                         "--max-model-len", "256", "--kv-budget-gb", "1", "--timeout", "60"])
    assert capsys.readouterr().out.startswith("machine: ")
    assert figures["hung"] == 0 and figures["requests"] > 12
    assert set(figures["statuses"]) <= {"200", "400", "413", "429", "503", "disconnected"}, figures["statuses"]
    assert figures["statuses"].get("200", 0) > 0 and figures["peak_rss_gb"] > 0
    assert sum(figures["statuses"].values()) == figures["requests"]
