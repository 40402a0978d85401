"""The generation engine: continuous-batched sampling for practice, evaluation and the local teacher.

HF `generate` spends most of its CPU time on work that produces nothing (measured on the demo:
135 tok/s against a ~1,500 tok/s compute limit for SmolLM2-135M): it copies each prompt K times
before the prompt pass, every row of a batch runs until the longest sample hits the cap, top-p
sorts the whole 49K vocabulary per row per step, and the KV cache is re-concatenated every step.
This engine removes each of those:

- **Prompt pass once per prompt.** New prompts are prefilled together (logits of the last
  position only); their KV is then copied into K rows, one per sample.
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
  from one seeded `torch.Generator`, so a re-run gives identical samples. The fp32 work runs in
  one scratch buffer per run: fresh [rows, vocab] temporaries were page-faulted in every step.
- **The calculator** (`calculator=True`): a row whose text ends in `<<expr=` gets `value>>`
  written for it (components/calculator.py); only rows whose last token ends in `=` are looked
  at, so the step loop stays vectorised.

Greedy decoding equals HF `generate` token for token (tests/test_engine.py, fp32 tiny model);
sampling draws from the same distribution (same test file, chi-square against HF's warpers).
`benchmarks/generation.py` measures it against HF `generate` on the real student.

    python -m components.engine models/round-0 "What is 12*7?"
"""

from __future__ import annotations

import sys
import time

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from components import calculator as calc
from components import decode_attention
from components.llama_decode import LlamaDecoder
from components.modeling import Generation

TOPK_PREFILTER = 64


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


def sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator,
           scratch: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from HF's temperature + top-p distribution, without a full-vocabulary
    sort when the nucleus fits in the top `TOPK_PREFILTER` tokens (it nearly always does).

    `logits` ([rows, vocab], any float dtype) is read, never written: the fp32 work happens in
    `scratch` (fp32, at least [rows, vocab]) when given. The engine passes one buffer for the
    whole run because two fresh [rows, vocab] fp32 temporaries a step (the upcast copy and
    logsumexp's shifted copy, 25 MB each at 128 rows) were page-faulted in anew most steps:
    measured up to 38 ms each, a third of a decode step."""
    rows, vocab = logits.shape
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
    u = torch.rand(tp.shape[0], 1, generator=gen, device=cdf.device) * cdf[:, -1:]
    pick = torch.searchsorted(cdf, u, right=True).clamp_(max=tp.shape[1] - 1)
    return pick.squeeze(1) if ti is None else ti.gather(1, pick).squeeze(1)


def buffer_columns(lmax: int, max_new_tokens: int) -> int:
    """Columns of the slot KV buffer: the longest prompt, 2 x max_new_tokens columns of decoding
    (refilled rows start later) before a shift copy is needed, and slack. components/batching.py
    sizes `batch_size: auto` rows with it too."""
    return lmax + 2 * max_new_tokens + 64


def _cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name warns until 5.40)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def supported(model) -> bool:
    """The slot cache covers decoder-only models whose every layer is full attention (Llama,
    Qwen2, Mistral without a window, SmolLM2...); others go through HF `generate`."""
    cfg = model.config.get_text_config(decoder=True)
    types = getattr(cfg, "layer_types", None) or ["full_attention"]
    return (not model.config.is_encoder_decoder and set(types) == {"full_attention"}
            and getattr(cfg, "sliding_window", None) in (None, 0))


def _equals_tokens(tok, vocab_size: int, device) -> torch.Tensor:
    """Which token ids end in '=' (the only tokens after which the calculator can step in)."""
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    ends = [i for i, p in enumerate(pieces) if isinstance(p, str) and p.endswith("=") and i < vocab_size]
    mask[ends] = True
    return mask.to(device)


@torch.inference_mode()
def generate(model, tok, prompts: list[str], *, num_return_sequences: int = 1, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256,
             batch_size: int = 64, seed: int = 0, calculator: bool = False,
             desc: str = "generate", fused: bool = True, attention: str = "auto") -> Generation:
    """texts[i][k]: the k-th completion of prompts[i]. `batch_size` is rows (sequences) decoded
    together; each prompt takes `num_return_sequences` of them. Deterministic for a fixed seed.
    `fused`: Llama-family models decode through components/llama_decode.py (bit-identical to the HF
    forward); `attention` ("auto" | "sdpa"): in bf16 on CPU, auto runs decode attention in the C
    kernel (components/decode_attention.py), sdpa in torch's. Generation.attention says which ran."""
    if attention not in ("auto", "sdpa"):
        raise ValueError(f"attention {attention!r}: expected 'auto' or 'sdpa'")
    from tqdm.auto import tqdm

    if not supported(model):
        from components.modeling import generate as hf_generate

        if calculator:
            raise ValueError(f"the calculator needs the slot-cache engine, which {type(model).__name__} "
                             "does not support (sliding-window or non-attention layers)")
        out = hf_generate(model, tok, prompts, num_return_sequences=num_return_sequences,
                          do_sample=do_sample, temperature=temperature, top_p=top_p,
                          max_new_tokens=max_new_tokens, batch_size=max(1, batch_size // num_return_sequences),
                          seed=seed, desc=desc)
        out.attention = "hf"
        return out
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature {temperature!r}: sampling needs temperature > 0 (use greedy instead)")
    K = num_return_sequences
    dev = model.device
    ckw = _cache_kwarg(model)
    rows = max(K, batch_size - batch_size % K)
    eos = tok.eos_token_id
    # Stop on every end token the model declares (Llama-3/Qwen instruct models list several).
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids = torch.tensor(sorted({eos, *(declared if isinstance(declared, list) else [declared])} - {None}),
                           device=dev)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))   # short first: tight prefills
    queue = list(reversed(order))                                      # pop() takes the shortest
    lmax = max((len(e) for e in enc), default=1)
    capacity = buffer_columns(lmax, max_new_tokens)
    gen = torch.Generator(device=dev).manual_seed(seed)
    eq_tokens = _equals_tokens(tok, model.config.vocab_size, dev) if calculator else None

    # Llama-family models decode through the fused step (bit-identical, fewer ops); others via HF.
    decoder = LlamaDecoder.wrap(model) if fused else None
    dtype = next(model.parameters()).dtype
    kernel = attention == "auto" and decoder is not None and decode_attention.usable(dtype, dev)
    cfg = model.config.get_text_config(decoder=True)
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cache = DynamicCache()
    cache.layers = [SlotLayer() for _ in range(cfg.num_hidden_layers)]
    for layer in cache.layers:
        layer.allocate(rows, heads, capacity, dim, dtype, dev)

    # Per-row state. A row is live while it decodes a sample; owner[r] = (prompt, k) or -1.
    mask = torch.zeros(rows, capacity, dtype=torch.long, device=dev)
    pos = torch.zeros(rows, dtype=torch.long, device=dev)           # position id of the next input
    nxt = torch.full((rows,), pad, dtype=torch.long, device=dev)    # next input token
    live = torch.zeros(rows, dtype=torch.bool, device=dev)
    owner = torch.full((rows,), -1, dtype=torch.long, device=dev)
    out_tok = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=dev)
    n_gen = torch.zeros(rows, dtype=torch.long, device=dev)
    forced: dict[int, list[int]] = {}                               # row -> calculator tokens to write
    first = torch.full((rows,), capacity, dtype=torch.long, device=dev)  # first column a row uses
    results: dict[int, list[int]] = {}
    col = lmax                                                      # every prompt fits left of col
    stats = {"new_tokens": 0, "calculator_calls": 0, "forced_tokens": 0}

    # One fp32 [rows, vocab] buffer for the sampler's whole run (see `sample`); vocab = logits' width.
    scratch = (torch.empty(rows, model.get_output_embeddings().out_features, device=dev)
               if do_sample else None)

    def choose(logits: torch.Tensor) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)   # on the model's dtype: the fp32 upcast is exact, the argmax the same
        return sample(logits, temperature, top_p, gen, scratch)

    def admit(slots: torch.Tensor) -> None:
        """Prefill as many queued prompts as the free `slots` hold (K rows each), in one forward."""
        n = min(len(queue), len(slots) // K)
        if n == 0:
            return
        ids = [queue.pop() for _ in range(n)]
        width = max(len(enc[i]) for i in ids)
        batch = torch.full((n, width), pad, dtype=torch.long)
        am = torch.zeros(n, width, dtype=torch.long)
        for j, i in enumerate(ids):   # per prompt, not per token or step: n <= rows / K
            batch[j, width - len(enc[i]):] = torch.tensor(enc[i])
            am[j, width - len(enc[i]):] = 1
        batch, am = batch.to(dev), am.to(dev)
        posids = (am.cumsum(-1) - 1).clamp_(min=0)
        pre = DynamicCache()
        logits = model(input_ids=batch, attention_mask=am, position_ids=posids, **{ckw: pre},
                       use_cache=True, logits_to_keep=1).logits[:, -1].float()
        take = slots[:n * K]
        for layer, player in zip(cache.layers, pre.layers):
            layer.kbuf[take, :, col - width:col] = player.keys.repeat_interleave(K, 0)
            layer.vbuf[take, :, col - width:col] = player.values.repeat_interleave(K, 0)
        mask[take] = 0
        mask[take, col - width:col] = am.repeat_interleave(K, 0)
        lens = am.sum(-1).repeat_interleave(K, 0)
        pos[take] = lens
        first[take] = col - lens
        prompt_ids = torch.tensor(ids, device=dev).repeat_interleave(K)
        owner[take] = prompt_ids * K + torch.arange(K, device=dev).repeat(n)
        live[take] = True
        n_gen[take] = 0
        nxt[take] = choose(logits.repeat_interleave(K, 0))
        record(take)

    def record(idx: torch.Tensor) -> None:
        """Append rows' chosen tokens; end rows at EOS or the cap; run the calculator hook."""
        out_tok[idx, n_gen[idx]] = nxt[idx]
        n_gen[idx] += 1
        done = torch.isin(nxt[idx], eos_ids) | (n_gen[idx] >= max_new_tokens)
        if eq_tokens is not None:
            for r in idx[eq_tokens[nxt[idx]] & ~done].tolist():   # rare: a token ending in '='
                tail = tok.decode(out_tok[r, max(0, int(n_gen[r]) - 48):int(n_gen[r])].tolist(),
                                  skip_special_tokens=True)
                write = calc.complete(tail)
                if write is not None:
                    forced[r] = tok(write, add_special_tokens=False)["input_ids"]
                    stats["calculator_calls"] += 1
        for r in idx[done].tolist():  # per finished sample, once
            n = int(n_gen[r])
            results[int(owner[r])] = out_tok[r, :n].tolist()
            stats["new_tokens"] += n
            live[r] = False
            owner[r] = -1
            forced.pop(r, None)

    start_t = time.perf_counter()
    bar = tqdm(total=len(prompts) * K, desc=desc, unit="sample", file=sys.stderr)
    done_before = 0
    admit(torch.arange(rows, device=dev))
    while bool(live.any()):
        if col >= capacity - 1:   # out of columns: shift live rows to the left (the only copy)
            lo = int(first[live].min())
            shift = min(lo, col - lmax)
            for layer in cache.layers:
                layer.kbuf[:, :, :col - shift] = layer.kbuf[:, :, shift:col].clone()
                layer.vbuf[:, :, :col - shift] = layer.vbuf[:, :, shift:col].clone()
            mask[:, :col - shift] = mask[:, shift:col].clone()
            mask[:, col - shift:] = 0
            first -= shift
            col -= shift
        lo = int(first[live].min())
        mask[:, col] = 1
        if decoder is not None:
            logits = decoder.step(nxt, pos, cache.layers, lo, col, mask[:, lo:col + 1], kernel=kernel)
        else:
            for layer in cache.layers:
                layer.window(lo, col)
            logits = model(input_ids=nxt[:, None], attention_mask=mask[:, lo:col + 1],
                           position_ids=pos[:, None], use_cache=True, **{ckw: cache}).logits[:, -1]
        col += 1
        pos += 1
        nxt = choose(logits)
        for r, toks in list(forced.items()):   # calculator rows (rare): write its tokens instead
            nxt[r] = toks.pop(0)
            stats["forced_tokens"] += 1
            if not toks:
                del forced[r]
        alive = live.nonzero().squeeze(1)
        record(alive)
        free = (~live).nonzero().squeeze(1)
        if queue and len(free) >= max(K, rows // 8):
            admit(free)
        elif not queue and 0 < live.sum() <= rows * 3 // 4 and len(free):
            keepr = live.nonzero().squeeze(1)     # tail: drop finished rows from the batch
            n, lo = len(keepr), int(first[live].min())
            for layer in cache.layers:
                # In place, and only the columns attention still reads ([lo, col)): a fresh
                # kbuf[keepr] copied (and page-faulted) every column of the buffer, ~1 GB a time.
                # Columns right of col are written before they are read; left of lo never read.
                layer.kbuf[:n, :, lo:col] = layer.kbuf[keepr, :, lo:col]
                layer.vbuf[:n, :, lo:col] = layer.vbuf[keepr, :, lo:col]
                layer.kbuf, layer.vbuf = layer.kbuf[:n], layer.vbuf[:n]
            mask, pos, nxt, live, owner = mask[keepr], pos[keepr], nxt[keepr], live[keepr], owner[keepr]
            out_tok, n_gen, first = out_tok[keepr], n_gen[keepr], first[keepr]
            remap = {int(o): i for i, o in enumerate(keepr.tolist())}
            forced = {remap[r]: t for r, t in forced.items() if r in remap}
            rows = len(keepr)
        if len(results) - done_before >= K * 8:
            bar.update(len(results) - done_before)
            done_before = len(results)
            bar.set_postfix(tok_s=f"{stats['new_tokens'] / (time.perf_counter() - start_t):.0f}")
    bar.update(len(results) - done_before)
    bar.close()
    seconds = time.perf_counter() - start_t
    texts = tok.batch_decode([results[i] for i in range(len(prompts) * K)], skip_special_tokens=True)
    return Generation(texts=[[t.strip() for t in texts[i * K:(i + 1) * K]] for i in range(len(prompts))],
                      new_tokens=stats["new_tokens"], seconds=seconds,
                      calculator_calls=stats["calculator_calls"], forced_tokens=stats["forced_tokens"],
                      attention="kernel" if kernel else "sdpa")


if __name__ == "__main__":
    from components.modeling import chat_prompts, load, setup_runtime

    setup_runtime(0)
    m, t = load(sys.argv[1], dtype="bfloat16")
    print(generate(m, t, chat_prompts(t, [sys.argv[2]], "You are a helpful assistant.", "{question}"),
                   max_new_tokens=160, calculator=True).texts[0][0])
