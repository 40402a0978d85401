"""The device-dependent code paths that a CPU can check: what `batch_size: auto` resolves to
(CPU default; CUDA sizes from a given amount of free memory), the precision and trainer class
picked per device, and merging a bf16-trained adapter into the fp32 base.

The same paths on a real GPU: tests/test_cuda.py (skipped without CUDA).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig

from tutorloop.config import ENGINE_ROWS_CPU, PREFERENCE_BATCH_CPU, SFT_BATCH_CPU
from tutorloop.hardware import Precision, ResolvedRuntime
from tutorloop.inference import batching
from tutorloop.train import batching as train_batching
from tutorloop.train import lora, precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def on(device: torch.device, resolved: Precision) -> ResolvedRuntime:
    """A resolved runtime on `device` at `resolved` precision, without touching this machine."""
    return ResolvedRuntime(device=device.type, precision=resolved, attention="sdpa", threads=1)
GB = 1 << 30
# SmolLM2-135M's shape
SMOL = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3)


def test_integer_batch_sizes_are_used_as_given_on_every_device():
    for dev in (CPU, CUDA):
        assert batching.engine_rows(24, device=dev, cpu_default=128, row_bytes=1, sequences=4, k=4) == 24
        assert train_batching.train_batch(3, 5, device=dev, cpu_default=8, example_bytes=1) == (3, 5)


def test_auto_on_cpu_is_the_measured_default():
    assert batching.engine_rows("auto", device=CPU, cpu_default=ENGINE_ROWS_CPU, row_bytes=1,
                                sequences=10**6, k=4) == ENGINE_ROWS_CPU == 128
    assert train_batching.train_batch("auto", 2, device=CPU, cpu_default=SFT_BATCH_CPU, example_bytes=1) == (8, 2)
    assert train_batching.train_batch("auto", 2, device=CPU, cpu_default=PREFERENCE_BATCH_CPU,
                                      example_bytes=1) == (4, 2)


def test_engine_row_bytes_counts_the_slot_cache_and_the_logits():
    cap = 600
    kv = 2 * 30 * 3 * 64 * cap * 2                      # K and V, layers, KV heads, head dim, bf16
    assert batching.engine_row_bytes(SMOL, cap, torch.bfloat16) == kv + 49152 * (2 + 16) + cap * 16
    assert batching.engine_row_bytes(SMOL, cap, torch.float32) > batching.engine_row_bytes(SMOL, cap, torch.bfloat16)


def test_auto_engine_rows_on_cuda_follow_free_memory_in_whole_prompts():
    row = 10 * 2**20
    rows = lambda free, sequences=10**6, k=4: batching.engine_rows(  # noqa: E731
        "auto", device=CUDA, cpu_default=128, row_bytes=row, sequences=sequences, k=k, free_bytes=free)
    fit = int(1 * GB * batching.MEMORY_SHARE) // row   # 71 rows of 10 MiB in 70% of 1 GiB
    assert rows(1 * GB) == fit - fit % 4 == 68          # whole prompts: K rows each
    assert rows(1 * GB, k=1) == fit
    assert rows(80 * GB) == batching.MAX_ENGINE_ROWS    # a big GPU: capped where decode is compute-bound
    assert rows(80 * GB, sequences=40) == 40            # never more rows than sequences to decode
    assert rows(1) == 4                                 # no room: still one prompt's K rows (it may OOM, loudly)
    # SmolLM2 on a 141 GB H200 with ~138 GB free, 256-token prompts, 160 new tokens: the cap
    cap = 256 + 2 * 160 + 64
    assert batching.engine_rows("auto", device=CUDA, cpu_default=128, k=4, sequences=1200, free_bytes=138 * GB,
                                row_bytes=batching.engine_row_bytes(SMOL, cap, torch.bfloat16)) == 1024


def test_auto_train_batch_on_cuda_keeps_the_effective_batch():
    ex = train_batching.train_example_bytes(SMOL, 384)
    assert train_batching.train_example_bytes(SMOL, 384, pairs=True) == 2 * ex
    go = lambda free, accum=2, cpu=8: train_batching.train_batch(  # noqa: E731
        "auto", accum, device=CUDA, cpu_default=cpu, example_bytes=ex, free_bytes=free)
    assert go(80 * GB) == (16, 1)                       # 8 x 2 on CPU -> 16 x 1: the same optimisation
    assert go(80 * GB, accum=4, cpu=4) == (16, 1)
    fit = int(4 * GB * train_batching.MEMORY_SHARE) // ex
    assert 4 <= fit < 8 and go(4 * GB) == (4, 4)        # the largest divisor of 16 that fits
    assert go(0) == (1, 16)
    for free in (0, 1 * GB, 3 * GB, 8 * GB, 80 * GB):
        b, a = go(free)
        assert b * a == 16


def test_precision_and_dtype_per_device():
    """What the resolved precision does, not what the table says: the Trainer built from these
    arguments computes a LoRA layer's forward in bf16 only where bf16 resolved (native bf16),
    in plain fp32 elsewhere (bf16 without native kernels is 35-50x slower on an AVX2 CPU)."""
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    bf16, fp32, fp16_amp = Precision("bfloat16", "bf16", ""), Precision("float32", None, ""), Precision("float32", "fp16", "")
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    for resolved, computes_in in ((bf16, torch.bfloat16), (fp32, torch.float32)):
        model = LlamaForCausalLM(cfg)
        assert precision.train_dtype(on(CPU, resolved)) == "float32"      # fp32 master weights on CPU
        args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to="none",
                                 **precision.trainer_precision(on(CPU, resolved)))
        prepared = Trainer(model=model, args=args).accelerator.prepare_model(model)
        seen = []
        prepared.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        prepared(input_ids=torch.tensor([[1, 2, 3]]))
        assert seen == [computes_in], (resolved, seen)
    # CUDA (no GPU here: the arguments): a bf16 base with bf16 AMP; without bf16, fp32 weights + fp16 AMP
    assert precision.trainer_precision(on(CUDA, bf16)) == {"bf16": True, "fp16": False}
    assert precision.train_dtype(on(CUDA, bf16)) == "bfloat16"
    assert precision.trainer_precision(on(CUDA, fp16_amp)) == {"bf16": False, "fp16": True}
    assert precision.train_dtype(on(CUDA, fp16_amp)) == "float32"

def test_the_plain_loss_override_is_for_cpu_only():
    from trl import SFTTrainer

    from tutorloop.train import sft

    cpu_cls = sft.make_sft_trainer_class(CPU)
    assert issubclass(cpu_cls, SFTTrainer) and cpu_cls is not SFTTrainer
    assert cpu_cls.compute_loss is not SFTTrainer.compute_loss
    assert sft.make_sft_trainer_class(CUDA) is SFTTrainer   # TRL's own (fused, chunked) loss on GPUs


def test_sft_and_dpo_resolve_auto_on_the_models_device(params_factory, tiny_model_dir):
    from tutorloop.modeling import load
    from tutorloop.train import sft

    model, _ = load(tiny_model_dir)
    raw_sft = params_factory().sft.model_dump()
    params = params_factory(sft={**raw_sft, "batch_size": "auto", "grad_accum": 3})
    assert sft.resolve_batch(params.sft, model) == (SFT_BATCH_CPU, 3)
    assert train_batching.device_batch("auto", 2, model, 256, PREFERENCE_BATCH_CPU, pairs=True) == (PREFERENCE_BATCH_CPU, 2)


def test_a_bf16_trained_adapter_is_merged_into_the_fp32_base(tiny_model_dir, tmp_path):
    """The CUDA path's merge, on CPU: base + delta at fp32, not every weight rounded to bf16."""
    from peft import (
        LoraConfig,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    from tutorloop.modeling import load

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    half, tok = load(tiny_model_dir, dtype="bfloat16")
    torch.manual_seed(0)
    peft_half = get_peft_model(half, copy.deepcopy(cfg))                 # adapters fp32 (PEFT's autocast_adapter_dtype)
    assert {p.dtype for n, p in peft_half.named_parameters() if "lora_" in n} == {torch.float32}
    lora.merge_and_save_full_precision(peft_half, tok, tmp_path / "merged", tiny_model_dir)
    saved, _ = load(tmp_path / "merged")

    full, _ = load(tiny_model_dir)                         # the reference: the same adapter, merged in fp32
    ref = get_peft_model(full, copy.deepcopy(cfg))
    set_peft_model_state_dict(ref, get_peft_model_state_dict(peft_half))
    want = ref.merge_and_unload().state_dict()
    got = saved.state_dict()
    assert all(v.dtype == torch.float32 for v in got.values())
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(got[name], want[name])
    assert all(torch.equal(got[k], want[k]) for k in want)
    # what merging into the bf16 copy would have saved: visibly rounded
    naive = peft_half.merge_and_unload().state_dict()[name].float()
    assert not torch.equal(naive, want[name])


def test_local_sampler_resolves_auto_rows_on_cpu(tiny_model_dir):
    from tutorloop.inference.sampler import LocalSampler

    s = LocalSampler(tiny_model_dir, ResolvedRuntime("cpu", Precision("float32", None, ""), "kernel", 1),
                     batch_size="auto", calculator=False)
    gen = s([[{"role": "user", "content": "What is 2+3?"}]] * 3, k=2, do_sample=True, temperature=0.7,
            top_p=0.95, max_new_tokens=4, seed=0)
    from tutorloop.inference.kernels import attention as decode_attention

    ran = "kernel" if decode_attention.load() is not None else "sdpa"
    assert s.rows == ENGINE_ROWS_CPU and s.metrics(gen) == {"batch_size": ENGINE_ROWS_CPU, "attention": ran,
                                                                 "precision": "float32", "device": "cpu"}
    assert [len(t) for t in gen.texts] == [2, 2, 2]


@pytest.mark.parametrize("setting", [0, -3, "big", True, 2.5])
def test_bad_batch_sizes_are_one_clear_error(setting):
    from test_config import errors_of, raw_params

    raw = raw_params()
    raw["practice"]["batch_size"] = setting
    msg = errors_of(raw)
    assert msg.count("practice.batch_size") == 1 and "a positive integer or 'auto'" in msg
