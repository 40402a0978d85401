"""The generation engine: continuous-batched sampling for practice, evaluation and the local teacher.

Holds `generate` (and `supported`: which models it covers), one run's state and steps (`_Run`),
the slot KV cache (`SlotLayer`, `buffer_columns`) and the sampler (`sample`, `warp`).

HF `generate` spends most of its CPU time on work that produces nothing (measured on the demo:
135 tok/s against a ~1,500 tok/s compute limit for SmolLM2-135M): it copies each prompt K times
before the prompt pass, every row of a batch runs until the longest sample hits the cap, top-p
sorts the whole 49K vocabulary per row per step, and the KV cache is re-concatenated every step.
This engine removes each of those:

- **Prompt pass once per prompt.** New prompts are prefilled together (logits of the last
  position only), in length-sorted passes padded to their own longest (`_passes`); their KV is
  then copied into K rows, one per sample. The tokens every prompt starts with (the chat
  template and system prompt) are computed once per run and reused (`_prefix`).
- **Continuous batching.** `batch_size` rows decode together. A row that ends (EOS or the token
  cap) frees its slot; as soon as K slots are free the next prompt is prefilled into them. When
  the queue is empty, finished rows are compacted away (in place, over the attended columns
  only) instead of being decoded as padding.
- **A slot KV cache** (`SlotLayer`): preallocated per layer, written in place at one shared
  column per step; rows are right-aligned at that column, padding on the left is masked, and
  the attention window starts at the earliest column a live row uses (a view, not a copy).
  The cache is copied only when the write column reaches the end of the buffer.
- **Exact top-p without a full sort.** Temperature, then the nucleus (HF's rule: keep a token
  while the mass ranked strictly above it is < top_p) from the top 64 tokens; a row whose top 64
  hold less than top_p of the mass falls back to a full sort. Sampling is an inverse-CDF draw
  at a uniform hashed from (seed, sample, token position): a re-run gives identical samples,
  and so does a run with another batch size or other prompts beside it — up to the BLAS: where
  a GEMM rounds by its row count (measured ~1e-7 in fp32 with AVX-512 on an AMD EPYC Zen 4), a
  near-tie can still flip a draw (tests/test_engine.py checks the engine's part in float64). The fp32 work runs in
  one scratch buffer per run: fresh [rows, vocab] temporaries were page-faulted in every step.
- **Prompts that arrive mid-run** (`feed`, for `tutorloop serve`): between steps the run asks
  `feed` for more prompts and queues them behind the ones waiting, so a request that arrives
  while others decode takes the next free rows instead of waiting for the whole call to end;
  each prompt may have its own token cap, and `on_prompt` hands a prompt's K completions over
  the moment its last one ends.
- **The calculator** (`calculator=True`): a row whose text ends in `<<expr=` gets `value>>`
  written for it (tutorloop/inference/calculator.py); only rows whose last token ends in `=` are looked
  at, so the step loop stays vectorised.

Greedy decoding equals HF `generate` token for token (tests/test_engine.py, fp32 tiny model);
sampling draws from the same distribution (same test file, chi-square against HF's warpers).
`benchmarks/generation.py` runs it on a real checkpoint and measures it against HF `generate`;
`benchmarks/decode_profile.py` shows where a run's time goes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from tutorloop.inference import calculator as calc
from tutorloop.inference.fused import LlamaDecoder
from tutorloop.inference.kernels import attention as decode_attention
from tutorloop.modeling import Generation

TOPK_PREFILTER = 64
PAD_SHARE = 0.125       # a prompt pass may spend this share of its token slots on padding (`_passes`)
PREFIX_MIN_TOKENS = 8   # a shared prompt prefix shorter than this is prefilled with each prompt
log = logging.getLogger(__name__)


class SlotLayer(DynamicLayer):
    """One layer's KV for `rows` sequences in a preallocated [rows, heads, capacity, dim] buffer.

    The engine sets the window (`start`, `col`) before each forward; `update` writes the step's
    key/value at column `col` in place and hands attention the view [start, col + 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.kbuf = self.vbuf = None
        self.start = self.col = 0

    def allocate(self, rows: int, heads: int, capacity: int, dim: int, dtype, device) -> None:
        self.kbuf = torch.zeros(rows, heads, capacity, dim, dtype=dtype, device=device)
        self.vbuf = torch.zeros_like(self.kbuf)
        self.kfull, self.vfull = self.kbuf, self.vbuf   # compaction narrows kbuf to a view; regrowing widens it again
        self.device, self.is_initialized = device, True
        self.keys, self.values = self.kbuf[:, :, :0], self.vbuf[:, :, :0]

    def window(self, start: int, col: int) -> None:
        self.start, self.col = start, col
        self.keys, self.values = self.kbuf[:, :, start:col], self.vbuf[:, :, start:col]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        self.kbuf[:, :, self.col:self.col + n] = key_states
        self.vbuf[:, :, self.col:self.col + n] = value_states
        self.keys = self.kbuf[:, :, self.start:self.col + n]
        self.values = self.vbuf[:, :, self.start:self.col + n]
        return self.keys, self.values


def warp(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """HF's sampling distribution (temperature, then top-p), computed over the full vocabulary
    by sorting: the reference `sample` must match (used by the tests and the fallback path)."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sp, si = probs.sort(dim=-1, descending=True)
    drop = (sp.cumsum(-1) - sp) >= top_p
    drop[..., 0] = False
    kept = torch.zeros_like(probs).scatter_(-1, si, sp.masked_fill(drop, 0.0))
    return kept / kept.sum(-1, keepdim=True)


_MIX = 0x45D9F3B   # below 2^31: every product of a 32-bit value fits an int64 (no overflow)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding [0, 2^32)."""
    x = (((x >> 16) ^ x) * _MIX) & 0xFFFFFFFF
    x = (((x >> 16) ^ x) * _MIX) & 0xFFFFFFFF
    return (x >> 16) ^ x


def prompt_keys(prompts: list[str], seeds: list[int] | None = None) -> list[int]:
    """A 32-bit key per prompt from its text (and, for a repeated prompt, which repeat it is; and
    its own seed, where each prompt has one), so a prompt samples the same whatever other prompts
    share its call, and repeats still differ."""
    seen: dict[tuple, int] = {}
    keys = []
    for i, p in enumerate(prompts):
        own = () if seeds is None else (seeds[i],)
        seen[(p, *own)] = n = seen.get((p, *own), -1) + 1
        text = f"{n}\0{p}" if seeds is None else f"{n}\0{seeds[i]}\0{p}"
        keys.append(int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little"))
    return keys


def draws(seed: int, prompt: torch.Tensor, sample: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """One uniform in [0, 1) per row, a pure function of (seed, prompt key, sample index, token
    position): a sample's tokens do not depend on which rows or prompts it shared a batch with,
    so `batch_size` (and `auto` resolving it differently elsewhere) never changes what a seed samples
    (bar a GEMM that rounds by its row count flipping a near-tie: the module docstring)."""
    h = _mix32(torch.full_like(prompt, seed & 0xFFFFFFFF))
    for part in (prompt, sample, step):
        h = _mix32(h ^ (part & 0xFFFFFFFF))
    return (h >> 8).float() / float(1 << 24)   # 24 bits: exact in fp32


def sample(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor,
           scratch: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from HF's temperature + top-p distribution, without a full-vocabulary
    sort when the nucleus fits in the top `TOPK_PREFILTER` tokens (it nearly always does).

    `logits` ([rows, vocab], any float dtype) is read, never written: the fp32 work happens in
    `scratch` (fp32, at least [rows, vocab]) when given. The engine passes one buffer for the
    whole run because two fresh [rows, vocab] fp32 temporaries a step (the upcast copy and
    logsumexp's shifted copy, 25 MB each at 128 rows) were page-faulted in anew most steps:
    measured up to 38 ms each, a third of a decode step."""
    rows, vocab = logits.shape
    # `u`: one uniform per row (`draws`), the inverse-CDF draw's position.
    x = scratch[:rows] if scratch is not None else torch.empty(rows, vocab, device=logits.device)
    x.copy_(logits).div_(temperature)                          # fp32, as HF's warpers see them
    if top_p >= 1.0:   # no truncation: the full distribution
        tp, ti = torch.softmax(x, dim=-1), None
    else:
        k = min(TOPK_PREFILTER, vocab)
        top, ti = x.topk(k, dim=-1)                            # sorted, descending
        # log-sum-exp in place (top[:, :1] is the row max): no [rows, vocab] temporary.
        lse = top[:, :1] + x.sub_(top[:, :1]).exp_().sum(-1, keepdim=True).log_()
        tp = (top - lse).exp_()
        keep = (tp.cumsum(-1) - tp) < top_p
        keep[:, 0] = True                                      # HF's min_tokens_to_keep=1 (top_p=0: greedy)
        wide = (tp.sum(-1) < top_p).nonzero().squeeze(1)
        if len(wide):                                           # rare: the nucleus is wider than k
            probs = warp(logits[wide].float(), temperature, top_p)
            width = int((probs > 0).sum(-1).max())
            if width > k:
                pad = lambda t: torch.cat([t, t.new_zeros(t.shape[0], width - k)], 1)  # noqa: E731
                tp, ti, keep = pad(tp), pad(ti), pad(keep)
            wp, wi = probs.topk(tp.shape[1], dim=-1)
            tp[wide], ti[wide], keep[wide] = wp, wi, wp > 0
        tp = tp.masked_fill(~keep, 0.0)
    cdf = tp.cumsum(-1)
    pick = torch.searchsorted(cdf, u.to(cdf.device)[:, None] * cdf[:, -1:], right=True).clamp_(max=tp.shape[1] - 1)
    return pick.squeeze(1) if ti is None else ti.gather(1, pick).squeeze(1)


def shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The longest token prefix every prompt starts with, leaving each at least one token of its
    own (a prompt pass needs one input token per row for its next-token logits)."""
    if not prompts:
        return []
    shared = list(os.path.commonprefix(prompts))
    return shared[:min(len(p) for p in prompts) - 1]


def buffer_columns(lmax: int, max_new_tokens: int) -> int:
    """Columns of the slot KV buffer: the longest prompt, 2 x max_new_tokens columns of decoding
    (refilled rows start later) before a shift copy is needed, and slack. tutorloop/inference/batching.py
    sizes `batch_size: auto` rows with it too."""
    return lmax + 2 * max_new_tokens + 64


def _cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name warns until 5.40)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def supported(model) -> bool:
    """The slot cache covers decoder-only models whose every layer is full attention (Llama,
    Qwen2, Mistral without a window, SmolLM2...); others go through HF `generate`. `model`: a
    model or its config (checked before loading weights)."""
    root = getattr(model, "config", model)
    cfg = root.get_text_config(decoder=True)
    types = getattr(cfg, "layer_types", None) or ["full_attention"]
    return (not root.is_encoder_decoder and set(types) == {"full_attention"}
            and getattr(cfg, "sliding_window", None) in (None, 0))


def _equals_tokens(tok, vocab_size: int, device) -> torch.Tensor:
    """Which token ids end in '=' (the only tokens after which the calculator can step in)."""
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    ends = [i for i, p in enumerate(pieces) if isinstance(p, str) and p.endswith("=") and i < vocab_size]
    mask[ends] = True
    return mask.to(device)


def _hf_generate(model, tok, prompts: list[str], *, num_return_sequences: int, do_sample: bool,
                 temperature: float, top_p: float, max_new_tokens: int, batch_size: int, seed: int,
                 calculator: bool, desc: str) -> Generation:
    """Models the slot cache does not cover (`supported`): HF `generate`, batch_size // K prompts a call."""
    from tutorloop.modeling import generate as hf_generate

    if calculator:
        raise ValueError(f"the calculator needs the slot-cache engine, which {type(model).__name__} "
                         "does not support (sliding-window or non-attention layers)")
    out = hf_generate(model, tok, prompts, num_return_sequences=num_return_sequences,
                      do_sample=do_sample, temperature=temperature, top_p=top_p,
                      max_new_tokens=max_new_tokens, batch_size=max(1, batch_size // num_return_sequences),
                      seed=seed, desc=desc)
    out.attention = "hf"
    return out


class _Run:
    """One `generate` call on the slot cache: the prompt queue, the KV cache, per-row state, results.

    A row is live while it decodes a sample; owner[r] = prompt * K + k of that sample, or -1. Every
    row writes its next key/value at the one shared column `col`; a row's prompt sits right-aligned
    left of the column it was prefilled at, and first[r] is the earliest column it uses. The loop
    (`generate`) is: `admit` prompts into free rows, then `step` / `record` / `refill_or_compact`
    until no row is live. The only randomness is `draws`, used in `choose` (prefill, then each step)."""

    def __init__(self, model, tok, prompts: list[str], *, K: int, batch_size: int, do_sample: bool,
                 temperature: float, top_p: float, max_new_tokens: int, seed: int, calculator: bool,
                 fused: bool, attention: str, seeds: list[int] | None = None, max_prompt_tokens: int = 0,
                 on_prompt=None, caps: list[int] | None = None) -> None:
        self.model, self.tok, self.K, self.n_prompts = model, tok, K, len(prompts)
        self.do_sample, self.temperature, self.top_p = do_sample, temperature, top_p
        self.max_new_tokens = max_new_tokens
        self.dev = model.device
        self.ckw = _cache_kwarg(model)
        self.rows = self.full_rows = max(K, batch_size - batch_size % K)
        self.on_prompt, self.ended = on_prompt, [0] * len(prompts)   # samples ended, per prompt
        self.caps = list(caps or [max_new_tokens] * len(prompts))    # token cap, per prompt (<= max_new_tokens)
        self._tokenize(prompts, max_prompt_tokens)
        self.seed, self.keys = seed, torch.tensor(prompt_keys(prompts, seeds), dtype=torch.long, device=self.dev)
        self.eq_tokens = _equals_tokens(tok, model.config.vocab_size, self.dev) if calculator else None
        self._allocate_cache(fused, attention)
        self._allocate_rows()
        # One fp32 [rows, vocab] buffer for the sampler's whole run (see `sample`); vocab = logits' width.
        self.scratch = (torch.empty(self.rows, model.get_output_embeddings().out_features, device=self.dev)
                        if do_sample else None)

    def _tokenize(self, prompts: list[str], max_prompt_tokens: int = 0) -> None:
        """Token ids, the end and pad tokens, the queue (shortest prompt popped first), the buffer
        width (room for prompts up to `max_prompt_tokens` long, for those `extend` adds later)."""
        tok, eos = self.tok, self.tok.eos_token_id
        # Stop on every end token the model declares (Llama-3/Qwen instruct models list several).
        declared = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        self.eos_ids = torch.tensor(sorted({eos, *(declared if isinstance(declared, list) else [declared])}
                                           - {None}), device=self.dev)
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        enc = self.enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        self.shared = shared_prefix(enc)
        order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))   # short first: tight prefills
        self.queue = list(reversed(order))                                 # pop() takes the shortest
        self.lmax = max(max((len(e) for e in enc), default=1), max_prompt_tokens)
        self.capacity = buffer_columns(self.lmax, self.max_new_tokens)

    def _allocate_cache(self, fused: bool, attention: str) -> None:
        """The decode path (fused step or HF forward, C kernel or SDPA) and one SlotLayer per layer."""
        model, dev = self.model, self.dev
        # Llama-family models decode through the fused step (bit-identical, fewer ops); others via HF.
        self.decoder = LlamaDecoder.wrap(model) if fused else None
        dtype = next(model.parameters()).dtype
        # "kernel" (a resolved runtime's path) and "auto" ask the same: the C kernel where it covers
        # the model's dtype and device and builds here; "sdpa" keeps torch's
        self.kernel = attention != "sdpa" and self.decoder is not None and decode_attention.usable(dtype, dev)
        self.kernel_failed = False
        cfg = model.config.get_text_config(decoder=True)
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.cache = DynamicCache()
        self.cache.layers = [SlotLayer() for _ in range(cfg.num_hidden_layers)]
        for layer in self.cache.layers:
            layer.allocate(self.rows, heads, self.capacity, dim, dtype, dev)

    def _allocate_rows(self) -> None:
        """Per-row state (all rows free), the shared write column and the run's counters."""
        rows, dev, pad = self.rows, self.dev, self.pad
        self.mask = torch.zeros(rows, self.capacity, dtype=torch.long, device=dev)
        self.pos = torch.zeros(rows, dtype=torch.long, device=dev)           # position id of the next input
        self.nxt = torch.full((rows,), pad, dtype=torch.long, device=dev)    # next input token
        self.live = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.owner = torch.full((rows,), -1, dtype=torch.long, device=dev)
        self.out_tok = torch.full((rows, self.max_new_tokens), pad, dtype=torch.long, device=dev)
        self.n_gen = torch.zeros(rows, dtype=torch.long, device=dev)
        self.cap = torch.full((rows,), self.max_new_tokens, dtype=torch.long, device=dev)  # the row's token cap
        self.forced: dict[int, list[int]] = {}                               # row -> calculator tokens to write
        self.first = torch.full((rows,), self.capacity, dtype=torch.long, device=dev)  # first column a row uses
        self.results: dict[int, list[int]] = {}                              # owner -> completion token ids
        self.col = self.lmax                                                 # every prompt fits left of col
        self.new_tokens = self.calculator_calls = self.forced_tokens = 0
        self.prefix_kv = None                                                # (shared prefix, its KV per layer): `_prefix`

    # --- the loop's steps ---------------------------------------------------------------------

    def any_live(self) -> bool:
        return bool(self.live.any())

    def live_rows(self) -> torch.Tensor:
        return self.live.nonzero().squeeze(1)

    def free_rows(self) -> torch.Tensor:
        return (~self.live).nonzero().squeeze(1)

    def extend(self, prompts: list[str], seeds: list[int], caps: list[int]) -> int:
        """Queue more prompts behind those waiting (each with its own seed and token cap <= the
        run's); returns the index of the first. Prompts must fit the buffer (`fits`)."""
        enc = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if any(len(e) > self.lmax for e in enc) or any(not 0 < c <= self.max_new_tokens for c in caps):
            raise ValueError("a prompt longer than the run's buffer, or a cap above its max_new_tokens")
        first = self.n_prompts
        self.enc += enc
        self.shared = list(os.path.commonprefix([self.shared, shared_prefix(enc)]))   # still every prompt's
        self.keys = torch.cat([self.keys, torch.tensor(prompt_keys(prompts, seeds), dtype=torch.long, device=self.dev)])
        self.caps += caps
        self.ended += [0] * len(prompts)
        self.queue[:0] = reversed(range(first, first + len(prompts)))   # pop() takes the end: first come, first served
        self.n_prompts += len(prompts)
        return first

    def partial(self, owner: int) -> list[int]:
        """Tokens sample `owner` (= prompt * K + k) has so far: all of them once it ended, none while queued."""
        if owner in self.results:
            return self.results[owner]
        row = (self.owner == owner).nonzero()
        return self.out_tok[int(row[0]), :int(self.n_gen[int(row[0])])].tolist() if len(row) else []

    def end(self, owner: int) -> None:
        """End sample `owner` after its next token (serving: its text reached a stop string)."""
        row = (self.owner == owner).nonzero()
        if len(row):
            self.cap[int(row[0])] = self.n_gen[int(row[0])]

    def drop(self, prompts: list[int]) -> None:
        """Abandon `prompts` (serving: their client went away): queued ones never start, and each
        row decoding one ends after its next token, so its row is free within one decode step.
        Their results are whatever they had; `on_prompt` is not called for them."""
        gone = set(prompts)
        self.queue[:] = [p for p in self.queue if p not in gone]
        for p in gone:
            for owner in range(p * self.K, (p + 1) * self.K):
                if (self.owner == owner).any():
                    self.end(owner)
                else:
                    self.results.setdefault(owner, [])
            self.ended[p] = self.K   # counted as ended now: a live row ending later must not call on_prompt

    def fits(self, n_tokens: int, cap: int) -> bool:
        """Whether a prompt of `n_tokens` with token cap `cap` can join this run (`extend`)."""
        return n_tokens <= self.lmax and 0 < cap <= self.max_new_tokens

    def choose(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The next token of `rows` (default: every row): the argmax, or a draw keyed by the run's
        seed, the row's prompt and sample index, and its token position (`draws`)."""
        if not self.do_sample:
            return logits.argmax(-1)   # on the model's dtype: the fp32 upcast is exact, the argmax the same
        owner, step = (self.owner, self.n_gen) if rows is None else (self.owner[rows], self.n_gen[rows])
        owner = owner.clamp(min=0)   # a free row (-1) draws too; its token is never kept
        u = draws(self.seed, self.keys[owner // self.K], owner % self.K, step)
        return sample(logits, self.temperature, self.top_p, u, self.scratch)

    def admit(self, slots: torch.Tensor) -> None:
        """Prefill as many queued prompts as the free `slots` hold (K rows each), shortest first,
        in passes that keep their padding under PAD_SHARE (`_passes`)."""
        n = min(len(self.queue), len(slots) // self.K)
        ids = sorted((self.queue.pop() for _ in range(n)), key=lambda i: len(self.enc[i]))
        start = 0
        for chunk in self._passes(ids):
            self._admit_pass(chunk, slots[start * self.K:(start + len(chunk)) * self.K])
            start += len(chunk)

    def _passes(self, ids: list[int]) -> list[list[int]]:
        """Length-sorted prompts cut into prompt passes, each padded to its own longest: one pass
        for 100 evaluation prompts of 71-109 tokens spent 22% of its work on padding."""
        passes: list[list[int]] = []
        tokens = 0   # prompt tokens in the last pass
        for i in ids:
            length = len(self.enc[i])   # sorted: the longest of the last pass if it joins
            cells = (len(passes[-1]) + 1) * length if passes else 0
            if passes and cells - tokens - length <= PAD_SHARE * cells:
                passes[-1].append(i)
                tokens += length
            else:
                passes.append([i])
                tokens = length
        return passes

    def _admit_pass(self, ids: list[int], take: torch.Tensor) -> None:
        """One prompt pass of `ids` into rows `take` (K each), right-aligned left of `col`."""
        K, col, n = self.K, self.col, len(ids)
        logits, pre, am = self._prefill(ids)
        width = am.shape[1]
        # The prompt pass ran once per prompt; its KV is copied into the K rows of its samples.
        for layer, player in zip(self.cache.layers, pre.layers):
            layer.kbuf[take, :, col - width:col] = player.keys.repeat_interleave(K, 0)
            layer.vbuf[take, :, col - width:col] = player.values.repeat_interleave(K, 0)
        self.mask[take] = 0
        self.mask[take, col - width:col] = am.repeat_interleave(K, 0)
        lens = am.sum(-1).repeat_interleave(K, 0)
        self.pos[take] = lens
        # the earliest column the row uses: its first unmasked one (left padding is never read)
        self.first[take] = col - width + (am.cumsum(-1) == 0).sum(-1).repeat_interleave(K, 0)
        prompt_ids = torch.tensor(ids, device=self.dev).repeat_interleave(K)
        self.owner[take] = prompt_ids * K + torch.arange(K, device=self.dev).repeat(n)
        self.live[take] = True
        self.n_gen[take] = 0
        self.cap[take] = torch.tensor([self.caps[i] for i in ids], device=self.dev).repeat_interleave(K)
        self.nxt[take] = self.choose(logits.repeat_interleave(K, 0), take)
        self.record(take)

    def _prefill(self, ids: list[int]) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """The prompt pass of prompts `ids`: fp32 logits of the last position only, the prompts'
        KV (a fresh cache) and their attention mask [n, width].

        The tokens every prompt of the run starts with (`shared`: the chat template and system
        prompt, 38 of a GSM8K prompt's ~106) run once per run, at batch 1 (`_prefix`); each row
        then computes only its own suffix, left-padded to the pass's longest.
        A row's columns are [shared prefix | padding | suffix]: the mask hides the padding, and
        position ids run on from the prefix, so the keys are those of the unpadded prompt."""
        enc, n = self.enc, len(ids)
        prefix = self._prefix()
        skip = prefix[0][0].shape[2] if prefix else 0
        width = max(len(enc[i]) for i in ids) - skip
        batch = torch.full((n, width), self.pad, dtype=torch.long)
        am = torch.zeros(n, width, dtype=torch.long)
        for j, i in enumerate(ids):   # per prompt, not per token or step: n <= rows / K
            batch[j, width - len(enc[i]) + skip:] = torch.tensor(enc[i][skip:])
            am[j, width - len(enc[i]) + skip:] = 1
        batch, am = batch.to(self.dev), am.to(self.dev)
        posids = (am.cumsum(-1) - 1).clamp_(min=0) + skip
        if prefix:
            pre = DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix])
            am = torch.cat([am.new_ones(n, skip), am], 1)
        else:
            pre = DynamicCache()
        logits = self.model(input_ids=batch, attention_mask=am, position_ids=posids, **{self.ckw: pre},
                            use_cache=True, logits_to_keep=1).logits[:, -1].float()
        return logits, pre, am

    def _prefix(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The KV of the run's shared prefix (`shared`: what every prompt of the run, queued or
        added by `extend`, starts with, leaving each at least one token of its own), computed at
        its first use and again only if `extend` shortened it; None when it is too short to pay
        for a pass of its own."""
        shared = self.shared
        if len(shared) < PREFIX_MIN_TOKENS:
            return None
        if self.prefix_kv is None or self.prefix_kv[0] != shared:
            cache = DynamicCache()
            self.model(input_ids=torch.tensor([shared], device=self.dev), **{self.ckw: cache}, use_cache=True,
                       logits_to_keep=1)
            self.prefix_kv = (shared, [(layer.keys, layer.values) for layer in cache.layers])
        return self.prefix_kv[1]

    def step(self) -> None:
        """One decode step for every row (finished rows too, masked, until refilled or compacted):
        the next token of each row in `nxt`, calculator tokens written over the model's choice."""
        if self.col >= self.capacity - 1:
            self._shift()
        lo = int(self.first[self.live].min())
        self.mask[:, self.col] = 1
        logits = self._forward(lo)
        self.col += 1
        self.pos += 1
        self.nxt = self.choose(logits)
        self._apply_calculator()

    def _shift(self) -> None:
        """Out of columns: shift live rows to the left (the only copy of the cache)."""
        col = self.col
        lo = int(self.first[self.live].min())
        shift = min(lo, col - self.lmax)
        for layer in self.cache.layers:
            layer.kbuf[:, :, :col - shift] = layer.kbuf[:, :, shift:col].clone()
            layer.vbuf[:, :, :col - shift] = layer.vbuf[:, :, shift:col].clone()
        self.mask[:, :col - shift] = self.mask[:, shift:col].clone()
        self.mask[:, col - shift:] = 0
        self.first -= shift
        self.col -= shift

    def _forward(self, lo: int) -> torch.Tensor:
        """Logits [rows, vocab] for each row's input `nxt`, written at column `col`; attention reads
        columns [lo, col] (lo: the earliest column a live row uses)."""
        col, window = self.col, self.mask[:, lo:self.col + 1]
        if self.decoder is not None:
            try:
                return self.decoder.step(self.nxt, self.pos, self.cache.layers, lo, col, window, kernel=self.kernel)
            except (RuntimeError, ValueError, OSError) as err:
                if not self.kernel:
                    raise
                # The kernel failed at run time (out of memory, a layout it does not take): finish
                # on SDPA. Re-running the step is safe: it rewrites the same keys/values at `col`.
                log.warning("decode attention kernel failed (%s); continuing with torch's SDPA", err)
                self.kernel, self.kernel_failed = False, True
                return self.decoder.step(self.nxt, self.pos, self.cache.layers, lo, col, window, kernel=False)
        for layer in self.cache.layers:
            layer.window(lo, col)
        return self.model(input_ids=self.nxt[:, None], attention_mask=window, position_ids=self.pos[:, None],
                          use_cache=True, **{self.ckw: self.cache}).logits[:, -1]

    def _apply_calculator(self) -> None:
        """Rows the calculator is writing for take its next token instead of the model's."""
        for r, toks in list(self.forced.items()):   # calculator rows (rare): write its tokens instead
            self.nxt[r] = toks.pop(0)
            self.forced_tokens += 1
            if not toks:
                del self.forced[r]

    def record(self, idx: torch.Tensor) -> None:
        """Append rows' chosen tokens; end rows at EOS or the cap; run the calculator hook."""
        nxt, n_gen = self.nxt, self.n_gen
        self.out_tok[idx, n_gen[idx]] = nxt[idx]
        n_gen[idx] += 1
        done = torch.isin(nxt[idx], self.eos_ids) | (n_gen[idx] >= self.cap[idx])
        if self.eq_tokens is not None:
            self._call_calculator(idx[self.eq_tokens[nxt[idx]] & ~done])
        self._finish(idx[done])

    def _call_calculator(self, rows: torch.Tensor) -> None:
        """Rows whose last token ends in '=': where the text ends in an open `<<expr=`, queue the
        calculator's `value>>` as the row's next inputs (written by `_apply_calculator`)."""
        for r in rows.tolist():   # rare: a token ending in '='
            n = int(self.n_gen[r])
            tail = self.tok.decode(self.out_tok[r, max(0, n - 48):n].tolist(), skip_special_tokens=True)
            write = calc.complete(tail)
            if write is not None:
                self.forced[r] = self.tok(write, add_special_tokens=False)["input_ids"]
                self.calculator_calls += 1

    def _finish(self, rows: torch.Tensor) -> None:
        """Hand finished samples to `results` and free their rows."""
        for r in rows.tolist():  # per finished sample, once
            n, owner = int(self.n_gen[r]), int(self.owner[r])
            self.results[owner] = self.out_tok[r, :n].tolist()
            self.new_tokens += n
            self.live[r] = False
            self.owner[r] = -1
            self.forced.pop(r, None)
            prompt = owner // self.K
            self.ended[prompt] += 1
            if self.on_prompt is not None and self.ended[prompt] == self.K:
                self.on_prompt(prompt, *self.prompt_result(prompt))

    def refill_or_compact(self) -> None:
        """While prompts are queued, free rows take the next ones (once K and an eighth of the rows
        are free: one prefill for several prompts); after that, a batch at most 3/4 live is
        compacted to its live rows rather than decoding the finished ones as padding. Prompts
        queued after a compaction (`extend`) get the compacted rows back (`regrow`)."""
        free = self.free_rows()
        if self.queue and self.rows < self.full_rows and len(free) < max(self.K, self.rows // 8):
            self.regrow()
            free = self.free_rows()
        if self.queue and len(free) >= max(self.K, self.rows // 8):
            self.admit(free)
        elif not self.queue and 0 < self.live.sum() <= self.rows * 3 // 4 and len(free):
            self.compact()

    def compact(self) -> None:
        """Tail of the run: drop finished rows from the batch."""
        keepr = self.live_rows()
        n, lo, col = len(keepr), int(self.first[self.live].min()), self.col
        for layer in self.cache.layers:
            # In place, and only the columns attention still reads ([lo, col)): a fresh
            # kbuf[keepr] copied (and page-faulted) every column of the buffer, ~1 GB a time.
            # Columns right of col are written before they are read; left of lo never read.
            layer.kbuf[:n, :, lo:col] = layer.kbuf[keepr, :, lo:col]
            layer.vbuf[:n, :, lo:col] = layer.vbuf[keepr, :, lo:col]
            layer.kbuf, layer.vbuf = layer.kbuf[:n], layer.vbuf[:n]
        self.mask, self.pos, self.nxt = self.mask[keepr], self.pos[keepr], self.nxt[keepr]
        self.live, self.owner, self.first = self.live[keepr], self.owner[keepr], self.first[keepr]
        self.out_tok, self.n_gen, self.cap = self.out_tok[keepr], self.n_gen[keepr], self.cap[keepr]
        remap = {int(o): i for i, o in enumerate(keepr.tolist())}
        self.forced = {remap[r]: t for r, t in self.forced.items() if r in remap}
        self.rows = n

    def regrow(self) -> None:
        """Undo compactions: back to `full_rows` rows, the new ones free. The KV buffers are views
        of the allocation (compaction kept live rows at the front), so only per-row state grows."""
        extra, dev, cap = self.full_rows - self.rows, self.dev, self.capacity

        def grow(t: torch.Tensor, value) -> torch.Tensor:
            return torch.cat([t, torch.full((extra, *t.shape[1:]), value, dtype=t.dtype, device=dev)])

        for layer in self.cache.layers:
            layer.kbuf, layer.vbuf = layer.kfull[:self.full_rows], layer.vfull[:self.full_rows]
        self.mask, self.pos, self.nxt = grow(self.mask, 0), grow(self.pos, 0), grow(self.nxt, self.pad)
        self.live, self.owner, self.first = grow(self.live, False), grow(self.owner, -1), grow(self.first, cap)
        self.out_tok, self.n_gen = grow(self.out_tok, self.pad), grow(self.n_gen, 0)
        self.cap = grow(self.cap, self.max_new_tokens)
        self.rows = self.full_rows

    def prompt_result(self, i: int) -> tuple[list[str], list[int], list[str]]:
        """Prompt i's K completions: texts, tokens generated, finish reasons ("stop" / "length")."""
        res = [self.results[i * self.K + k] for k in range(self.K)]
        eos = set(self.eos_ids.tolist())
        texts = [t.strip() for t in self.tok.batch_decode(res, skip_special_tokens=True)]
        return texts, [len(t) for t in res], ["stop" if t and t[-1] in eos else "length" for t in res]

    def per_completion(self) -> tuple[list[list[int]], list[list[str]]]:
        """(tokens generated, finish reason) of each completion, shaped like `texts`."""
        eos = set(self.eos_ids.tolist())
        K, res = self.K, [self.results[i] for i in range(self.n_prompts * self.K)]
        counts = [len(t) for t in res]
        reasons = ["stop" if t and t[-1] in eos else "length" for t in res]
        return ([counts[i * K:(i + 1) * K] for i in range(self.n_prompts)],
                [reasons[i * K:(i + 1) * K] for i in range(self.n_prompts)])

    def texts(self) -> list[list[str]]:
        """texts[i][k]: the k-th completion of prompt i, decoded."""
        K = self.K
        texts = self.tok.batch_decode([self.results[i] for i in range(self.n_prompts * K)],
                                      skip_special_tokens=True)
        return [[t.strip() for t in texts[i * K:(i + 1) * K]] for i in range(self.n_prompts)]


def _decode(run: "_Run", feed, desc: str) -> None:
    """Step `run` until every prompt (and every one `feed` adds meanwhile) has all its completions."""
    from tqdm.auto import tqdm

    K = run.K
    start_t = time.perf_counter()
    bar = tqdm(total=run.n_prompts * K, desc=desc, unit="sample", file=sys.stderr)
    done_before = 0
    while run.any_live() or run.queue:
        if feed is not None:
            added = run.n_prompts
            feed(run)                        # requests that arrived meanwhile join the queue
            bar.total += (run.n_prompts - added) * K
        if not run.any_live():
            # every row is free: the first prompts, or the next ones when every admitted row
            # ended in its prefill (EOS as the first token) while prompts were still queued
            run.admit(run.free_rows())
            continue
        run.step()                           # the next token of every row
        run.record(run.live_rows())          # appended; rows at EOS or the cap end
        run.refill_or_compact()
        if len(run.results) - done_before >= K * 8:
            bar.update(len(run.results) - done_before)
            done_before = len(run.results)
            bar.set_postfix(tok_s=f"{run.new_tokens / (time.perf_counter() - start_t):.0f}")
    bar.update(len(run.results) - done_before)
    bar.close()


@torch.inference_mode()
def generate(model, tok, prompts: list[str], *, num_return_sequences: int = 1, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256,
             batch_size: int = 64, seed: int = 0, calculator: bool = False,
             desc: str = "generate", fused: bool = True, attention: str = "auto",
             seeds: list[int] | None = None, feed=None, on_prompt=None, max_prompt_tokens: int = 0,
             caps: list[int] | None = None) -> Generation:
    """texts[i][k]: the k-th completion of prompts[i]. `batch_size` is rows (sequences) decoded
    together; each prompt takes `num_return_sequences` of them. Deterministic for a fixed seed
    (`seeds`: one per prompt instead, so requests with their own seeds share one batch).
    `fused`: Llama-family models decode through tutorloop/inference/fused.py (bit-identical to the HF
    forward); `attention` ("auto" or "kernel", a resolved runtime's name for it | "sdpa"): in bf16 or fp32 on CPU,
    the C kernel (tutorloop/inference/kernels/attention.py) or torch's SDPA. Generation.attention says which ran.

    Serving (`tutorloop serve`): `feed(run)` is called between steps and may `run.extend(...)`
    prompts that `run.fits`; `max_prompt_tokens` sizes the buffer for them; `caps`: a token cap
    per prompt, each <= max_new_tokens (the buffer's); `on_prompt(i, texts,
    counts, reasons)` gets each prompt's K completions as soon as they have all ended."""
    if attention not in ("auto", "kernel", "sdpa"):
        raise ValueError(f"attention {attention!r}: expected 'auto', 'kernel' or 'sdpa'")
    if feed is not None and not supported(model):
        # checked before the HF fallback: that path never calls feed or on_prompt, so a server
        # over it would leave every request unanswered
        raise ValueError(f"feed needs the slot-cache engine, which {type(model).__name__} does not support")
    if not supported(model):
        return _hf_generate(model, tok, prompts, num_return_sequences=num_return_sequences, do_sample=do_sample,
                            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, seed=seed, calculator=calculator, desc=desc)
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature {temperature!r}: sampling needs temperature > 0 (use greedy instead)")
    K = num_return_sequences
    run = _Run(model, tok, prompts, K=K, batch_size=batch_size, do_sample=do_sample, temperature=temperature,
               top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, calculator=calculator, fused=fused, seeds=seeds,
               attention=attention, max_prompt_tokens=max_prompt_tokens, on_prompt=on_prompt, caps=caps)
    start_t = time.perf_counter()
    _decode(run, feed, desc)
    seconds = time.perf_counter() - start_t
    counts, reasons = run.per_completion()
    return Generation(texts=run.texts(), new_tokens=run.new_tokens, seconds=seconds,
                      completion_tokens=counts, finish_reasons=reasons,
                      calculator_calls=run.calculator_calls, forced_tokens=run.forced_tokens,
                      attention="kernel" if run.kernel else "kernel+sdpa" if run.kernel_failed else "sdpa")
