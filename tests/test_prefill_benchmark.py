"""benchmarks/prefill.py on a tiny model: both arms run, the prompt passes are timed inside the
run's seconds, and switching the shared prefix off does not change a completion."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import prefill  # noqa: E402


def test_prefill_benchmark_times_both_arms_on_the_same_completions(tiny_model_dir, tmp_path, monkeypatch, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": f"Tom has {n} apples and buys {n + 3} more. How many?"}) + "\n"
                                 for n in range(5)))
    out = tmp_path / "prefill.json"
    monkeypatch.setattr(sys, "argv", ["prefill", str(tiny_model_dir), "--problems", "4", "--questions", str(questions),
                                      "--new-tokens", "6", "--rows", "8", "--json", str(out)])
    prefill.main()
    result = json.loads(out.read_text())
    assert result["problems"] == 4 and result["identical_texts"] is True
    for arm in ("one_pass", "engine"):
        assert 0 < result[arm]["prefill_seconds"] < result[arm]["seconds"]
    assert "speed-up" in capsys.readouterr().out
