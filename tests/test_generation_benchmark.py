"""benchmarks/generation.py's ceiling on a tiny model: the FLOPs it counts are the model's matmuls."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import generation  # noqa: E402

from tutorloop import modeling  # noqa: E402


def test_gemm_ceiling_counts_every_matmul_of_a_decode_step(tiny_model_dir):
    model, _ = modeling.load(tiny_model_dir, dtype="float32")
    cfg = model.config
    head = cfg.hidden_size // cfg.num_attention_heads
    # by hand, per layer: q and o (hidden x heads*head), k and v (hidden x kv_heads*head), gate/up/down; then the LM head
    per_layer = (2 * cfg.hidden_size * cfg.num_attention_heads * head
                 + 2 * cfg.hidden_size * cfg.num_key_value_heads * head + 3 * cfg.hidden_size * cfg.intermediate_size)
    macs = cfg.num_hidden_layers * per_layer + cfg.hidden_size * cfg.vocab_size
    got = generation.gemm_ceiling(model, rows=4, reps=2)
    assert got["flops_per_token"] == 2 * macs and got["step_seconds"] > 0


def test_gemm_ceiling_is_the_best_timed_pass_after_the_warm_up(tiny_model_dir, monkeypatch):
    """Timed passes of 0.5 s and 0.25 s after an untimed warm-up: the step is 0.25 s, so 4 rows make
    16 tok/s, whatever the machine."""
    model, _ = modeling.load(tiny_model_dir, dtype="float32")
    clock = iter([0.0, 10.0, 10.5, 20.0, 20.25])   # the warm-up's start (its end is not read), then (start, end)
    monkeypatch.setattr(generation.time, "perf_counter", lambda: next(clock))
    got = generation.gemm_ceiling(model, rows=4, reps=2)
    assert got["step_seconds"] == 0.25 and got["tokens_per_second"] == 16.0
    assert got["gflops"] == got["flops_per_token"] * 16.0 / 1e9
