"""One decode step of a Llama-family model (Llama, Mistral, Qwen2, SmolLM2) without HF's per-layer overhead.

The engine (tutorloop/inference/engine.py) spends each decode step on a batch of one-token rows. Through
the HF module tree that step costs ~20 small ops per layer beside the matmuls and attention
(RMSNorm as 8 ops, separate q/k/v and gate/up projections, the cache's `update`, a 4D mask built
per forward, RoPE per tensor). This step computes exactly the same thing with fewer ops:

- q/k/v and gate/up are one matmul each (the module weights become views of the fused weight,
  so no memory is added); RMSNorm is `F.rms_norm` on the fp32 upcast, as HF's module does;
- RoPE is applied to q and k together, cos/sin once per step (the model's own rotary module,
  so every rope scaling type it supports is honoured);
- the step's key/value are written straight into the engine's slot buffers and attention reads
  the window [lo, col]: the same SDPA call, with the same GQA packing, as transformers' sdpa path.

It is bit-for-bit the model's own forward (tests/test_fused_decode.py: fp32 and bf16, Llama and
Qwen2 with q/k/v biases); any model it does not recognise keeps the HF forward (`wrap` returns None).
`benchmarks/decode_profile.py` times the step (and the C attention kernel in it) on a real checkpoint.

May import torch and tutorloop/inference/kernels only: the engine imports this module, not the reverse.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tutorloop.inference.kernels import attention as decode_attention

# One decoder per live model (weak: a model's decoder goes with it; the fused tensors are its weights).
_DECODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

# Architectures whose decoder layer is exactly: x += o(attn(rope(qkv(norm(x))))); x += down(silu(gate) * up).
FAMILIES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}


def _fuse(mods: list[nn.Linear], attr: str) -> torch.Tensor | None:
    """Concatenate the modules' weights (or biases) along the output dim and make each module's
    parameter a view of its rows, so the fused tensor costs no extra memory. Outside inference
    mode: an inference tensor as a parameter would break training the same model later."""
    parts = [getattr(m, attr) for m in mods]
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise ValueError(f"some projections have a {attr} and some do not")
    with torch.inference_mode(False), torch.no_grad():
        fused = torch.cat([p.detach() for p in parts], 0)
        start = 0
        for p in parts:
            p.data = fused[start:start + p.shape[0]]
            start += p.shape[0]
    return fused


class _Layer(NamedTuple):
    """One decoder layer's tensors for the fused step; wqkv/wgu are fused, the module weights views of them."""

    w_in: torch.Tensor               # input RMSNorm weight
    wqkv: torch.Tensor               # [q; k; v] projection weight
    bqkv: torch.Tensor | None        # [q; k; v] bias (Qwen2) or None
    wo: torch.Tensor                 # output projection
    bo: torch.Tensor | None
    scale: float                     # attention softmax scale
    w_post: torch.Tensor             # post-attention RMSNorm weight
    wgu: torch.Tensor                # [gate; up] projection weight
    wdown: torch.Tensor              # down projection


class LlamaDecoder:
    """Fused decode step for one model; build it once per model with `wrap`."""

    def __init__(self, model) -> None:
        cfg = model.config.get_text_config(decoder=True)
        # The parts, not the model: _DECODERS holds decoders strongly and must not keep models alive.
        self.inner, self.lm_head = model.model, model.lm_head
        self.eps = cfg.rms_norm_eps
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.inter = cfg.intermediate_size
        self.layers = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(_Layer(layer.input_layernorm.weight,
                                _fuse([a.q_proj, a.k_proj, a.v_proj], "weight"),
                                _fuse([a.q_proj, a.k_proj, a.v_proj], "bias"),
                                a.o_proj.weight, a.o_proj.bias, a.scaling,
                                layer.post_attention_layernorm.weight,
                                _fuse([m.gate_proj, m.up_proj], "weight"),
                                m.down_proj.weight))

    @classmethod
    def wrap(cls, model) -> "LlamaDecoder | None":
        """The fused step for `model`, or None where its forward is not the Llama layer above (other
        architectures, other activations, quantised or adapter-wrapped linears, non-SDPA attention)."""
        if type(model).__name__ not in FAMILIES:
            return None
        cfg = model.config.get_text_config(decoder=True)
        layers = model.model.layers
        linears = [m for layer in layers
                   for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                             layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
        qkv_bias = {layer.self_attn.q_proj.bias is None for layer in layers} | \
                   {p.bias is None for layer in layers for p in (layer.self_attn.k_proj, layer.self_attn.v_proj)}
        if (getattr(cfg, "hidden_act", None) != "silu"
                or getattr(cfg, "_attn_implementation", None) != "sdpa"
                or any(type(m) is not nn.Linear for m in [*linears, model.lm_head])
                or any(p.bias is not None for layer in layers for p in (layer.mlp.gate_proj, layer.mlp.up_proj,
                                                                          layer.mlp.down_proj))
                or len(qkv_bias) > 1):   # q/k/v biases on some projections only: not a layout we fuse
            return None
        cached = _DECODERS.get(model)
        if cached is not None and cached.current():
            return cached
        # (Re)build: first use, or the model's weights were rebound since (deepcopy, .to(), assign=True).
        decoder = cls(model)
        _DECODERS[model] = decoder
        return decoder

    def current(self) -> bool:
        """Whether the fused tensors are still the model's own weights (views share their storage)."""
        for layer, fused in zip(self.inner.layers, self.layers):
            a, m, wqkv, wgu = layer.self_attn, layer.mlp, fused.wqkv, fused.wgu
            if (a.q_proj.weight.data_ptr() != wqkv.data_ptr()
                    or a.v_proj.weight.data_ptr() != wqkv[-a.v_proj.weight.shape[0]:].data_ptr()
                    or m.gate_proj.weight.data_ptr() != wgu.data_ptr()
                    or m.up_proj.weight.data_ptr() != wgu[m.gate_proj.weight.shape[0]:].data_ptr()
                    or a.q_proj.weight.dtype != wqkv.dtype or a.q_proj.weight.device != wqkv.device):
                return False
        return True

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # HF's RMSNorm: in fp32, cast back, then the weight (bit-identical to its 8-op version).
        return w * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def step(self, ids: torch.Tensor, pos: torch.Tensor, layers, lo: int, col: int,
             mask: torch.Tensor, kernel: bool = False) -> torch.Tensor:
        """Logits [rows, vocab] for one token per row. `layers` are the engine's SlotLayers: the
        step's key/value go to column `col` of each buffer and attention reads columns [lo, col];
        `mask` [rows, L] is the attention mask over those columns (nonzero = attend). `kernel`:
        attention in tutorloop/inference/kernels/attention.py instead of torch's SDPA; the caller decides
        (`decode_attention.usable`: bf16 or fp32 on CPU where the kernel builds)."""
        inner = self.inner
        x = inner.embed_tokens(ids)                                   # [rows, hidden]
        rows = x.shape[0]
        cos, sin = inner.rotary_emb(x[:, None], pos[:, None])         # [rows, 1, dim]
        cos, sin = cos[:, :1], sin[:, :1]                             # broadcast over heads
        nq, nkv, d, half = self.heads, self.kv_heads, self.dim, self.dim // 2
        allowed = mask.to(torch.uint8) if kernel else mask.bool()[:, None, None, :]   # shared by every layer
        # transformers drops an all-ones mask and calls SDPA with enable_gqa on [rows, heads, 1, dim]
        # instead of the packed GQA layout: another kernel path, other last bits. Mirror it.
        unmasked = not kernel and bool(allowed.all())
        for li, (w_in, wqkv, bqkv, wo, bo, scale, w_post, wgu, wdown) in enumerate(self.layers):
            qkv = F.linear(self._norm(x, w_in), wqkv, bqkv).view(rows, nq + 2 * nkv, d)
            qk = qkv[:, :nq + nkv]
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), -1) * sin
            kbuf, vbuf = layers[li].kbuf, layers[li].vbuf
            kbuf[:, :, col] = qk[:, nq:]
            vbuf[:, :, col] = qkv[:, nq + nkv:]
            # transformers' pack_gqa for one query token: [rows, kv_heads, groups, dim] on the kv heads.
            q = qk[:, :nq].reshape(rows, nkv, nq // nkv, d)
            if kernel:
                attn = decode_attention.attention(q, kbuf[:, :, lo:col + 1], vbuf[:, :, lo:col + 1],
                                                  allowed, scale)
            elif unmasked:
                attn = F.scaled_dot_product_attention(qk[:, :nq, None], kbuf[:, :, lo:col + 1],
                                                      vbuf[:, :, lo:col + 1], scale=scale, enable_gqa=True)
            else:
                attn = F.scaled_dot_product_attention(q, kbuf[:, :, lo:col + 1], vbuf[:, :, lo:col + 1],
                                                      attn_mask=allowed, scale=scale)
            x = x + F.linear(attn.reshape(rows, nq * d), wo, bo)
            gu = F.linear(self._norm(x, w_post), wgu)
            x = x + F.linear(F.silu(gu[:, :self.inter]) * gu[:, self.inter:], wdown)
        return self.lm_head(inner.norm(x))

