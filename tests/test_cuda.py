"""The stages' CUDA paths on a real GPU; every test here is skipped where CUDA is absent.

- the engine's greedy decoding equals HF `generate` token for token on CUDA (fp32, TF32 off),
  and sampling on CUDA is seeded;
- `batch_size: auto` resolves from the GPU's free memory, and a practice-sized run with it works;
- a tiny SFT step on CUDA: the frozen base in bf16, bf16 mixed precision, TRL's own loss (not the
  CPU plain-loss override), fp32 adapters, and an fp32 checkpoint merged into the fp32 base;
- a tiny DPO step on CUDA the same way;
- the sft stage under `accelerate launch` (training.launcher: accelerate) on every GPU there is
  (NCCL; one process per GPU) ends where one process ends, with one MLflow run.

    python -m pytest tests/test_cuda.py -q      # on a machine with a GPU
"""

from __future__ import annotations

import json

import pytest
import torch
from support import procedural_prompts

from tutorloop import modeling
from tutorloop.hardware import Precision, ResolvedRuntime, resolve_runtime
from tutorloop.inference import batching, engine

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.usefixtures("no_tracking")]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def tiny_cuda(tiny_model_dir):
    torch.backends.cuda.matmul.allow_tf32 = False   # exact fp32 matmuls: greedy must match bit for bit
    torch.backends.cudnn.allow_tf32 = False
    return modeling.load(tiny_model_dir, dtype="float32", device=CUDA)


def test_engine_greedy_equals_hf_generate_on_cuda(tiny_cuda):
    model, tok = tiny_cuda
    assert model.device.type == "cuda"
    prompts = procedural_prompts(tok, 24)
    ref = modeling.generate(model, tok, prompts, max_new_tokens=48, batch_size=24)
    out = engine.generate(model, tok, prompts, max_new_tokens=48, batch_size=4)   # refills, compaction, shift
    assert out.texts == ref.texts and out.new_tokens == ref.new_tokens
    a = engine.generate(model, tok, prompts[:6], num_return_sequences=3, do_sample=True, temperature=0.7,
                        top_p=0.95, max_new_tokens=24, batch_size=9, seed=3)
    b = engine.generate(model, tok, prompts[:6], num_return_sequences=3, do_sample=True, temperature=0.7,
                        top_p=0.95, max_new_tokens=24, batch_size=9, seed=3)
    assert a.texts == b.texts   # seeded on the device's generator too


def test_auto_rows_come_from_free_gpu_memory(tiny_model_dir):
    from tutorloop.inference.sampler import LocalSampler

    s = LocalSampler(tiny_model_dir, ResolvedRuntime("cuda", Precision("bfloat16", "bf16", ""), "sdpa", 1),
                     batch_size="auto", calculator=False)
    convs = [[{"role": "user", "content": f"What is {i}+3?"}] for i in range(40)]
    gen = s(convs, k=4, do_sample=True, temperature=0.7, top_p=0.95, max_new_tokens=16, seed=0)
    assert s.rows == 160 and [len(t) for t in gen.texts] == [4] * 40   # all 40 x 4 fit: one row each
    assert batching.free_memory(CUDA) > 0
    rows = batching.engine_rows("auto", device=CUDA, cpu_default=128, row_bytes=64 << 20, sequences=10**6, k=4)
    assert 4 <= rows <= batching.MAX_ENGINE_ROWS and rows % 4 == 0


def _sft_rows(n: int) -> list[dict]:
    from tutorloop.teachers import ProceduralTeacher

    return [{"question": r["question"], "solution": r["solution"]} for r in ProceduralTeacher().problems(n, seed=7)]


def test_a_tiny_sft_step_on_cuda_in_bf16(params_factory, tiny_model_dir, tmp_path, monkeypatch):
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from tutorloop.data.jsonl import write_jsonl
    from tutorloop.modeling import load
    from tutorloop.train import sft

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16 (the fp16 path is trainer_precision's)")
    monkeypatch.setenv("TUTORLOOP_TRAIN_DIR", str(tmp_path / "train"))
    base = params_factory()
    params = params_factory(runtime={"threads": 1, "device": "cuda"},
                            sft={**base.sft.model_dump(), "batch_size": "auto", "grad_accum": 2, "save_steps": 0})
    write_jsonl(tmp_path / "sft.jsonl", _sft_rows(16))
    seen = {}

    class Probe(TrainerCallback):   # records what the trainer trains with
        def on_train_begin(self, args, state, control, model=None, **kw):
            seen["args"] = args
            seen["frozen"] = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
            seen["adapter"] = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
            seen["device"] = next(model.parameters()).device.type

    orig = sft.build_trainer

    def build(*a, **k):
        trainer = orig(*a, **k)
        seen["class"] = type(trainer)
        return trainer

    monkeypatch.setattr(sft, "build_trainer", build)
    metrics = sft.train_sft(params, tiny_model_dir, tmp_path / "sft.jsonl", tmp_path / "out",
                            callbacks=[Probe()], runtime=resolve_runtime(params.runtime))
    assert seen["class"] is SFTTrainer                       # TRL's own loss path, not the CPU override
    assert seen["device"] == "cuda" and seen["args"].bf16 and not seen["args"].use_cpu
    assert seen["frozen"] == {torch.bfloat16} and seen["adapter"] == {torch.float32}
    assert (metrics["batch_size"], metrics["grad_accum"]) == (16, 1)   # 8 x 2 on CPU, one step of 16 here
    assert metrics["train_loss"] == metrics["train_loss"] and metrics["train_loss"] > 0   # finite
    merged, _ = load(tmp_path / "out")
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float32"


def test_a_tiny_dpo_step_on_cuda_in_bf16(params_factory, tiny_model_dir, tmp_path, monkeypatch):
    from tutorloop.data.jsonl import write_jsonl
    from tutorloop.modeling import load
    from tutorloop.train import preference

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    monkeypatch.setenv("TUTORLOOP_TRAIN_DIR", str(tmp_path / "train"))
    params = params_factory(runtime={"threads": 1, "device": "cuda"})
    rows = [{"question": r["question"], "chosen": r["solution"], "rejected": "#### 0"} for r in _sft_rows(8)]
    write_jsonl(tmp_path / "round" / "pairs.jsonl", rows)
    metrics = preference.train_preference(params, "1", tiny_model_dir, tmp_path / "round", tmp_path / "out",
                                          runtime=resolve_runtime(params.runtime))
    assert metrics["pairs"] == 8 and metrics["train_loss"] == metrics["train_loss"]
    merged, _ = load(tmp_path / "out")
    assert {p.dtype for p in merged.parameters()} == {torch.float32}


@pytest.mark.parametrize("gpus", [1, 2])
def test_the_sft_stage_under_accelerate_on_gpus_ends_where_one_process_ends(gpus, tmp_path, tiny_model_dir):
    """tests/test_distributed.py's check on GPUs (NCCL instead of gloo), one process per GPU."""
    import subprocess
    import sys

    import yaml
    from test_distributed import SFT, TOLERANCE, env_for, project, sft_runs

    if torch.cuda.device_count() < gpus:
        pytest.skip(f"needs {gpus} GPUs")
    weights = {}
    for n, launcher in ((1, "none"), (gpus, "accelerate")):
        ws = project(tmp_path / launcher, tiny_model_dir, n)
        raw = yaml.safe_load((ws / "params.yaml").read_text())
        raw["runtime"].update(device="cuda", precision="float32")
        raw["training"].update(launcher=launcher)
        (ws / "params.yaml").write_text(yaml.safe_dump(raw))
        done = subprocess.run([sys.executable, *SFT], cwd=ws, env=env_for(ws), capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert [r.data.metrics["processes"] for r in sft_runs(ws)] == [n]
        weights[launcher], _ = modeling.load(ws / "models" / "sft")
    one, many = weights["none"].state_dict(), weights["accelerate"].state_dict()
    assert max((one[k] - many[k]).abs().max().item() for k in one) < TOLERANCE * 10   # TF32 / NCCL sums
