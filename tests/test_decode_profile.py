"""benchmarks/decode_profile.py on a tiny model: every part is timed and the parts add up to the run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import decode_profile  # noqa: E402


def test_profile_parts_add_up_to_the_run(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["decode_profile", str(tiny_model_dir), "--prompts", "3",
                                      "--new-tokens", "6", "--rows", "8"])
    decode_profile.main()
    out = capsys.readouterr().out
    shares = dict(re.findall(r"^\s+(\S+)\s+-?[\d.]+ s\s+(-?[\d.]+)%$", out, flags=re.M))
    assert set(shares) == {"attention_core+rope", "mlp", "qkvo_proj", "lm_head", "norms",
                           "forward_other", "sampler", "outside_forward"}
    # The two residuals go negative if a part is counted twice or a hook nests inside another.
    assert float(shares["forward_other"]) > -1 and float(shares["outside_forward"]) > -1
    assert all(float(v) >= 0 for k, v in shares.items() if k not in ("forward_other", "outside_forward"))
    assert float(shares["attention_core+rope"]) > 0 and float(shares["mlp"]) > 0
    assert re.search(r"3 prompts x K=4, 6 tokens, 8 rows: \d+ useful tok/s", out)
