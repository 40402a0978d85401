"""The engine's fused decode step (tutorloop/inference/fused.py) and its C attention kernel
(tutorloop/inference/kernels/attention.py), on tiny models and random tensors built here.

- the fused step is bit-for-bit the HF forward (fp32 and bf16; Llama, and Qwen2 with q/k/v
  biases), and the engine gives the same tokens with it as without it;
- fusing the projections adds no memory and leaves the model trainable;
- models it does not cover (eager attention, another activation, another architecture) keep HF;
- the kernel against float64 attention over the shapes it specialises and the generic path
  (masks with holes, strided windows of the slot buffer, one column, groups 1-8, dims 64/128/80);
- the engine records which attention ran, and falls back to SDPA where no compiler is found.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support import procedural_prompts
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.cache_utils import DynamicCache

from tutorloop import hardware, modeling
from tutorloop.inference import engine
from tutorloop.inference.fused import LlamaDecoder
from tutorloop.inference.kernels import attention as decode_attention

SMALL = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
             num_key_value_heads=2, vocab_size=300, max_position_embeddings=512, rms_norm_eps=1e-5)


def _model(cls, cfg_cls, dtype, **extra):
    torch.manual_seed(0)
    cfg = cfg_cls(**SMALL, **extra)
    cfg._attn_implementation = "sdpa"
    return cls(cfg).to(dtype).eval()


def _slot_cache(model, rows, cols, dtype):
    cache = DynamicCache()
    cache.layers = [engine.SlotLayer() for _ in model.model.layers]
    g = torch.Generator().manual_seed(1)
    for layer in cache.layers:
        layer.allocate(rows, model.config.num_key_value_heads, cols,
                       model.config.hidden_size // model.config.num_attention_heads, dtype, "cpu")
        layer.kbuf.copy_(torch.randn(layer.kbuf.shape, generator=g))
        layer.vbuf.copy_(torch.randn(layer.vbuf.shape, generator=g))
    return cache


# SmolLM2-135M's layer shapes (one layer, random weights): the fused GEMMs at the real sizes.
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=1, num_attention_heads=9,
               num_key_value_heads=3, vocab_size=1000, max_position_embeddings=2048, rms_norm_eps=1e-5,
               rope_theta=100000.0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "smollm2-sized"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("holes", [True, False])   # all-ones: HF drops the mask and takes another SDPA path
def test_fused_step_is_the_hf_forward_bit_for_bit(arch, dtype, holes):
    if arch == "smollm2-sized":
        torch.manual_seed(0)
        cfg = LlamaConfig(**SMOLLM2)
        cfg._attn_implementation = "sdpa"
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    else:
        model = (_model(LlamaForCausalLM, LlamaConfig, dtype) if arch == "llama"
                 else _model(Qwen2ForCausalLM, Qwen2Config, dtype))
    if arch == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias is not None
    rows, cols, lo, col = 5, 40, 3, 30
    ref_cache, cache = _slot_cache(model, rows, cols, dtype), _slot_cache(model, rows, cols, dtype)
    mask = torch.ones(rows, cols, dtype=torch.long)
    if holes:
        mask[0, :10] = 0          # a row that starts later: left padding is masked
        mask[3, 5:12] = 0
    ids = torch.tensor([1, 7, 42, 299, 0])
    pos = torch.tensor([17, 3, 26, 9, 26])
    dec = LlamaDecoder.wrap(model)
    assert dec is not None
    with torch.inference_mode():
        for layer in ref_cache.layers:
            layer.window(lo, col)
        want = model(input_ids=ids[:, None], attention_mask=mask[:, lo:col + 1], position_ids=pos[:, None],
                     use_cache=True, **{engine._cache_kwarg(model): ref_cache}).logits[:, -1]
        got = dec.step(ids, pos, cache.layers, lo, col, mask[:, lo:col + 1])
    assert torch.equal(got, want)
    for a, b in zip(cache.layers, ref_cache.layers):   # the step's key/value landed in column col
        assert torch.equal(a.kbuf, b.kbuf) and torch.equal(a.vbuf, b.vbuf)


def test_fused_projections_share_memory_and_the_model_still_trains():
    model = _model(LlamaForCausalLM, LlamaConfig, torch.float32)
    ids = torch.tensor([[5, 9, 13, 2]])
    before = model(input_ids=ids).logits.detach()
    params = sum(p.numel() for p in model.parameters())
    dec = LlamaDecoder.wrap(model)
    assert LlamaDecoder.wrap(model) is dec                  # built once per model
    attn = model.model.layers[0].self_attn
    fused = dec.layers[0][1]
    assert attn.q_proj.weight.data_ptr() == fused.data_ptr()
    assert attn.k_proj.weight.data_ptr() == fused[attn.q_proj.weight.shape[0]:].data_ptr()
    assert sum(p.numel() for p in model.parameters()) == params
    assert torch.equal(model(input_ids=ids).logits, before)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()                                         # not inference tensors
    assert attn.q_proj.weight.grad is not None


def test_a_copied_or_converted_model_gets_a_fresh_decoder():
    import copy

    model = _model(LlamaForCausalLM, LlamaConfig, torch.float32)
    dec = LlamaDecoder.wrap(model)
    twin = copy.deepcopy(model)          # parameters cloned: the old fused tensors are not its weights
    with torch.no_grad():
        twin.model.layers[0].self_attn.q_proj.weight.add_(1.0)
    fresh = LlamaDecoder.wrap(twin)
    assert fresh is not dec and fresh.layers[0][1].data_ptr() == twin.model.layers[0].self_attn.q_proj.weight.data_ptr()
    assert LlamaDecoder.wrap(model) is dec
    half = LlamaDecoder.wrap(model.to(torch.bfloat16))   # .to() rebinds every parameter
    assert half is not dec and half.layers[0][1].dtype == torch.bfloat16


def test_models_the_step_does_not_cover_keep_the_hf_forward(tiny_model_dir):
    assert LlamaDecoder.wrap(_model(LlamaForCausalLM, LlamaConfig, torch.float32, hidden_act="gelu")) is None
    eager = _model(LlamaForCausalLM, LlamaConfig, torch.float32)
    eager.config._attn_implementation = "eager"
    assert LlamaDecoder.wrap(eager) is None
    from transformers import GPT2Config, GPT2LMHeadModel

    assert LlamaDecoder.wrap(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))) is None


def test_engine_gives_the_same_tokens_with_and_without_the_fused_step(tiny_model_dir):
    hardware.set_threads(0)
    for dtype in ("float32", "bfloat16"):
        model, tok = modeling.load(tiny_model_dir, dtype=dtype)
        prompts = procedural_prompts(tok, 10, seed=3)
        kw = dict(num_return_sequences=2, do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=24,
                  batch_size=8, seed=4, attention="sdpa")
        plain = engine.generate(model, tok, prompts, fused=False, **kw)
        fused = engine.generate(model, tok, prompts, fused=True, **kw)
        assert fused.texts == plain.texts and fused.new_tokens == plain.new_tokens
        assert fused.attention == "sdpa"


needs_kernel = pytest.mark.skipif(decode_attention.load() is None, reason="no C compiler to build the kernel")


def _reference(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                          attn_mask=mask.bool()[:, None, None, :], scale=scale)


def _host_has_avx512_bf16() -> bool:
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and "avx512_bf16" in decode_attention._cpu_signature()


# Each build the host runs: the portable loop everywhere, the AVX-512 BF16 blocks where the CPU has
# them (skipped by name elsewhere, so a run says which paths it checked).
KERNEL_PATHS = [("portable", "portable C loop"),
                pytest.param("native", "AVX-512 BF16", marks=pytest.mark.skipif(
                    not _host_has_avx512_bf16(), reason="this CPU has no AVX-512 BF16: that path is not built here"))]


@needs_kernel
@pytest.mark.parametrize("groups, dim", [(3, 64), (1, 64), (4, 128), (7, 64), (8, 128), (5, 64), (3, 80)])
@pytest.mark.parametrize("length", [1, 9, 301])
def test_fp32_kernel_matches_float64_attention(groups, dim, length):
    """The fp32 entry point (CPUs without native bf16 run the engine in fp32): fp32-accurate."""
    g = torch.Generator().manual_seed(groups * 100 + dim + length)
    rows, heads, cols, lo = 5, 2, length + 12, 4
    kbuf, vbuf = torch.randn(rows, heads, cols, dim, generator=g) * 2, torch.randn(rows, heads, cols, dim, generator=g)
    q = torch.randn(rows, heads, groups, dim, generator=g)
    k, v = kbuf[:, :, lo:lo + length], vbuf[:, :, lo:lo + length]
    mask = torch.rand(rows, length, generator=g) > 0.3
    mask[:, -1] = True
    mask[2] = False                                                   # a free row: zeros
    out = decode_attention.attention(q, k, v, mask.to(torch.uint8), dim ** -0.5)
    assert out.dtype == torch.float32 and torch.equal(out[2], torch.zeros_like(out[2]))
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(out[keep].double(), _reference(q, k, v, mask, dim ** -0.5)[keep], rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("variant, isa", KERNEL_PATHS)
@pytest.mark.parametrize("groups, dim", [(3, 64), (1, 64), (4, 128), (7, 64), (8, 128), (5, 64), (3, 80)])
@pytest.mark.parametrize("length", [1, 9, 301])
def test_kernel_matches_float64_attention(groups, dim, length, variant, isa):
    assert decode_attention.load(variant).isa == isa   # the path named is the path that runs
    g = torch.Generator().manual_seed(groups * 1000 + dim + length)
    rows, heads, cols, lo = 6, 2, length + 20, 7
    kbuf = torch.randn(rows, heads, cols, dim, generator=g).bfloat16() * 2
    vbuf = torch.randn(rows, heads, cols, dim, generator=g).bfloat16()
    q = torch.randn(rows, heads, groups, dim, generator=g).bfloat16()
    k, v = kbuf[:, :, lo:lo + length], vbuf[:, :, lo:lo + length]   # a window of the slot buffer
    mask = torch.rand(rows, length, generator=g) > 0.3
    mask[:, -1] = True                                                # the engine's own column
    mask[1, :-1] = False                                              # a row that attends one column
    scale = dim ** -0.5
    out = decode_attention.attention(q, k, v, mask.to(torch.uint8), scale, variant=variant)
    want = _reference(q, k, v, mask, scale)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    torch.testing.assert_close(out.double(), want, rtol=2 ** -7, atol=2e-3)
    # fp32 accumulation: nearly every output is the correctly rounded one (torch's flash kernel: ~60%)
    assert (out == want.bfloat16()).float().mean() > 0.97
    assert torch.equal(out[1], v[1, :, -1:].expand(heads, groups, dim))   # one column: its value


@needs_kernel
@pytest.mark.parametrize("variant, isa", KERNEL_PATHS)
def test_kernel_gives_zeros_for_a_row_that_attends_nothing(variant, isa):
    """A free slot's row is fully masked: zeros, never NaN (-inf - -inf) cast to an int exponent."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(3, 3, 3, 64, generator=g).bfloat16()
    k, v = torch.randn(3, 3, 40, 64, generator=g).bfloat16(), torch.randn(3, 3, 40, 64, generator=g).bfloat16()
    mask = torch.ones(3, 40, dtype=torch.uint8)
    mask[1] = 0
    out = decode_attention.attention(q, k, v, mask, 0.125, variant=variant)
    assert not out.isnan().any() and torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out[0].double(), _reference(q, k, v, mask, 0.125)[0], rtol=2 ** -7, atol=2e-3)


@needs_kernel
def test_a_kernel_failure_at_run_time_falls_back_to_sdpa(tiny_model_dir, monkeypatch):
    hardware.set_threads(0)
    model, tok = modeling.load(tiny_model_dir, dtype="bfloat16")
    prompts = procedural_prompts(tok, 3, seed=3)
    real, calls = decode_attention.attention, []

    def fails_later(*a, **kw):
        calls.append(1)
        if len(calls) > 40:   # a few steps in
            raise RuntimeError("decode attention failed (code 2: 1 = empty shape, 2 = out of memory)")
        return real(*a, **kw)

    monkeypatch.setattr(decode_attention, "attention", fails_later)
    out = engine.generate(model, tok, prompts, max_new_tokens=24)
    assert out.attention == "kernel+sdpa" and len(calls) == 41
    assert all(len(t) == 1 for t in out.texts) and out.new_tokens > 3 * 10


@needs_kernel
def test_fused_step_with_the_kernel_is_the_step_with_sdpa_to_bf16_rounding():
    torch.manual_seed(0)
    cfg = LlamaConfig(**SMOLLM2)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    rows, cols, lo, col = 6, 80, 5, 70
    a, b = _slot_cache(model, rows, cols, torch.bfloat16), _slot_cache(model, rows, cols, torch.bfloat16)
    mask = torch.ones(rows, cols, dtype=torch.long)
    mask[2, :30] = 0
    ids, pos = torch.tensor([3, 5, 7, 11, 13, 17]), torch.full((6,), 60)
    dec = LlamaDecoder.wrap(model)
    with torch.inference_mode():
        sdpa = dec.step(ids, pos, a.layers, lo, col, mask[:, lo:col + 1])
        kern = dec.step(ids, pos, b.layers, lo, col, mask[:, lo:col + 1], kernel=True)
    # the same q, window, scale and mask reach the kernel: logits agree to bf16 rounding
    torch.testing.assert_close(kern.float(), sdpa.float(), rtol=0.05, atol=0.05)
    assert (kern.argmax(-1) == sdpa.argmax(-1)).all()


@needs_kernel
def test_kernel_rejects_layouts_it_cannot_read():
    q = torch.zeros(2, 1, 3, 64, dtype=torch.bfloat16)
    k = torch.zeros(2, 1, 5, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="layout"):
        decode_attention.attention(q, k, k.clone()[:, :, :4], torch.ones(2, 5, dtype=torch.uint8), 0.1)
    with pytest.raises(ValueError, match="layout"):
        decode_attention.attention(q, k, k, torch.ones(2, 5, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="layout"):   # fp32 K with a bf16 q: one dtype for all
        decode_attention.attention(q, k.float(), k.float(), torch.ones(2, 5, dtype=torch.uint8), 0.1)
    with pytest.raises(ValueError, match="layout"):   # fp16 has no entry point
        decode_attention.attention(q.half(), k.half(), k.half(), torch.ones(2, 5, dtype=torch.uint8), 0.1)
    with pytest.raises(ValueError, match="layout"):   # a head dim narrower than q's
        decode_attention.attention(q, k[..., :32], k[..., :32], torch.ones(2, 5, dtype=torch.uint8), 0.1)


@needs_kernel
def test_engine_reports_the_kernel_and_is_seeded(tiny_model_dir):
    hardware.set_threads(0)
    model, tok = modeling.load(tiny_model_dir, dtype="bfloat16")
    prompts = procedural_prompts(tok, 6, seed=3)
    kw = dict(num_return_sequences=2, do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=16,
              batch_size=4, seed=2)
    a, b = engine.generate(model, tok, prompts, **kw), engine.generate(model, tok, prompts, **kw)
    assert a.attention == "kernel" and a.texts == b.texts
    assert engine.generate(model, tok, prompts, attention="sdpa", **kw).attention == "sdpa"
    m32, _ = modeling.load(tiny_model_dir, dtype="float32")   # fp32: the kernel's fp32 entry point
    assert engine.generate(m32, tok, prompts[:2], max_new_tokens=4).attention == "kernel"
    with pytest.raises(ValueError, match="attention"):
        engine.generate(model, tok, prompts, attention="flash", **kw)


def test_without_a_compiler_the_engine_keeps_sdpa(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("TUTORLOOP_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(decode_attention.shutil, "which", lambda name: None)
    decode_attention.load.cache_clear()
    try:
        assert decode_attention.load() is None
        hardware.set_threads(0)
        model, tok = modeling.load(tiny_model_dir, dtype="bfloat16")
        assert engine.generate(model, tok, procedural_prompts(tok, 2, seed=3), max_new_tokens=4).attention == "sdpa"
    finally:
        decode_attention.load.cache_clear()


def test_a_failing_compiler_is_a_warning_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TUTORLOOP_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")   # exits 1
    decode_attention.load.cache_clear()
    try:
        assert decode_attention.load() is None
        assert list(tmp_path.iterdir()) == []   # no half-written library left behind
    finally:
        decode_attention.load.cache_clear()
