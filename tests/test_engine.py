"""The generation engine against HF `generate`, and the calculator, on tiny models built here.

- greedy: token-for-token equal to HF `generate` (fp32), through refills, tail compaction and
  the buffer shift (more prompts than rows, more steps than the buffer has columns), and with
  the prompts' shared prefix computed once;
- sampling: the top-k-prefiltered nucleus equals HF's temperature + top-p warpers exactly, the
  sampler's draws match that distribution (chi-square), and the engine's first tokens match HF
  `generate`'s (two-sample chi-square); seeded re-runs are identical;
- the calculator: hand-made traces (nested, bad expressions, division, commas, an annotation
  never closed) and unsafe expressions refused; in the engine, a scripted model that writes a
  wrong `<<5*16=72>>` gets `80>>` written for it.
"""

from __future__ import annotations

import copy
import functools
from fractions import Fraction

import pytest
import torch
from support import procedural_prompts

from tutorloop import hardware, modeling
from tutorloop.inference import calculator, engine
from tutorloop.teachers import ProceduralTeacher


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    hardware.set_threads(0)
    return modeling.load(tiny_model_dir)


def test_greedy_equals_hf_generate_through_refills_compaction_and_shift(tiny):
    model, tok = tiny
    prompts = procedural_prompts(tok, 24)
    ref = modeling.generate(model, tok, prompts, max_new_tokens=48, batch_size=24)
    # 4 rows for 24 prompts: ~24*48/4 = 288 steps, past the buffer's lmax + 2*48 + 64 columns.
    lmax = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    assert 24 * 48 // 4 > lmax + 2 * 48 + 64
    out = engine.generate(model, tok, prompts, max_new_tokens=48, batch_size=4)
    assert out.texts == ref.texts
    assert out.new_tokens == ref.new_tokens
    # K greedy samples of one prompt are all the same completion.
    k3 = engine.generate(model, tok, prompts[:5], num_return_sequences=3, max_new_tokens=24, batch_size=9)
    assert all(len(set(t)) == 1 for t in k3.texts)
    assert [t[0] for t in k3.texts] == [t[0] for t in
                                        engine.generate(model, tok, prompts[:5], max_new_tokens=24).texts]


def test_the_shared_prompt_prefix_runs_once_and_changes_no_token(tiny, monkeypatch):
    """Evaluation's prompts share the chat template and system prompt: the engine computes those
    tokens once per run, at batch 1, and every prompt pass only the prompts' own suffixes; the
    greedy completions stay HF's token for token, and the same with the prefix pass switched off.
    A call whose prompts share too little (two system prompts) runs whole prompts."""
    import os

    model, tok = tiny
    prompts = procedural_prompts(tok, 12) + modeling.chat_prompts(tok, ["What is 2 + 2?"], "Solve.", "{question}")
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    shared = len(os.path.commonprefix(enc))
    assert shared >= engine.PREFIX_MIN_TOKENS
    passes = []   # (rows, columns, columns already cached) of every multi-token forward
    forward = model.forward

    @functools.wraps(forward)   # the engine reads forward's signature (which cache keyword it takes)
    def spy(*args, **kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            passes.append((*kwargs["input_ids"].shape, cache.get_seq_length() if cache is not None else 0))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    ref = modeling.generate(model, tok, prompts, max_new_tokens=24, batch_size=13)
    passes.clear()
    out = engine.generate(model, tok, prompts, max_new_tokens=24, batch_size=4)
    assert out.texts == ref.texts
    assert passes[0] == (1, shared, 0)   # the prefix, once for the run, not once per prompt pass
    assert len(passes) > 2 and all(cached == shared for _, _, cached in passes[1:])
    computed = sum(r * c for r, c, _ in passes)
    assert computed < sum(len(e) for e in enc)   # fewer prompt tokens computed than the prompts hold
    with monkeypatch.context() as m:
        m.setattr(engine, "PREFIX_MIN_TOKENS", 1 << 30)
        passes.clear()
        assert engine.generate(model, tok, prompts, max_new_tokens=24, batch_size=4).texts == ref.texts
        assert all(cached == 0 for _, _, cached in passes) and sum(r * c for r, c, _ in passes) > computed
    mixed = [prompts[0], modeling.chat_prompts(tok, ["What is 2 + 2?"], "Answer tersely, please.", "{question}")[0]]
    passes.clear()
    got = engine.generate(model, tok, mixed, max_new_tokens=24, batch_size=4)
    lens = sorted(len(tok(p, add_special_tokens=False)["input_ids"]) for p in mixed)
    assert sorted(c for _, c, _ in passes) in ([lens[-1]], lens) and sum(r for r, _, _ in passes) == 2   # whole prompts
    assert got.texts == modeling.generate(model, tok, mixed, max_new_tokens=24, batch_size=2).texts


def test_prompts_of_very_different_lengths_are_prefilled_in_tight_passes(tiny, monkeypatch):
    """One admission of short and long prompts runs as several prompt passes, each padded only to
    its own longest (at most PAD_SHARE of its cells), not one pass padded to the longest of all;
    the greedy completions stay HF's."""
    model, tok = tiny
    qs = [r["question"] for r in ProceduralTeacher().problems(8, seed=12)]
    prompts = modeling.chat_prompts(tok, qs[:4] + [" ".join([q] * 4) for q in qs[4:]], "Solve.", "{question}")
    run = engine._Run(model, tok, prompts, K=2, batch_size=16, do_sample=False, temperature=1.0, top_p=1.0,
                      max_new_tokens=8, seed=0, calculator=False, fused=True, attention="auto")
    passes = run._passes(sorted(range(8), key=lambda i: len(run.enc[i])))
    assert len(passes) >= 2 and sorted(sum(passes, [])) == list(range(8))
    for chunk in passes:
        lens = [len(run.enc[i]) for i in chunk]
        assert len(chunk) * max(lens) - sum(lens) <= engine.PAD_SHARE * len(chunk) * max(lens)
    widths = []
    prefill = engine._Run._prefill
    monkeypatch.setattr(engine._Run, "_prefill", lambda self, ids: widths.append(len(ids)) or prefill(self, ids))
    out = engine.generate(model, tok, prompts, num_return_sequences=2, max_new_tokens=16, batch_size=16)
    assert widths == [len(c) for c in passes]   # every prompt admitted at once, in those passes
    ref = modeling.generate(model, tok, prompts, max_new_tokens=16, batch_size=8)
    assert [t[0] for t in out.texts] == [t[0] for t in ref.texts]


@torch.no_grad()
def test_a_prompt_pass_over_the_shared_prefix_gives_the_unpadded_prompts_keys_and_logits(tiny):
    """Each row of a prompt pass ([shared prefix | padding | suffix]) holds exactly the keys and
    values of its prompt run alone, unpadded, and the same last-position logits: positions run
    on from the prefix, the padding is masked. (Random tiny models barely look at positions, so
    the greedy texts above would not notice a position off by the prefix's length; these do.)"""
    model, tok = tiny
    prompts = procedural_prompts(tok, 6, seed=11)
    run = engine._Run(model, tok, prompts, K=1, batch_size=8, do_sample=False, temperature=1.0, top_p=1.0,
                      max_new_tokens=8, seed=0, calculator=False, fused=True, attention="auto")
    ids = list(range(len(prompts)))
    logits, pre, am = run._prefill(ids)
    assert run.prefix_kv is not None, "the prompts share a chat template and system prompt: the prefix pass must run"
    for j, i in enumerate(ids):
        alone = torch.tensor([run.enc[i]])
        cache = engine.DynamicCache()
        ref = model(input_ids=alone, **{run.ckw: cache}, use_cache=True).logits[0, -1].float()
        torch.testing.assert_close(logits[j], ref, rtol=1e-4, atol=1e-5)
        cols = am[j].bool()
        for layer, ref_layer in zip(pre.layers, cache.layers):
            torch.testing.assert_close(layer.keys[j][:, cols], ref_layer.keys[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(layer.values[j][:, cols], ref_layer.values[0], rtol=1e-4, atol=1e-5)
    # admitted into the slot cache, a row's first column is its prefix's first: decode reads from there
    run.admit(run.free_rows())
    for r in range(len(prompts)):
        first = int(run.first[r])
        assert run.mask[r, first] == 1 and not run.mask[r, :first].any()


def test_nucleus_equals_hf_warpers():
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 500, generator=g) * torch.linspace(0.5, 8, 16)[:, None]
    for temperature, top_p in [(0.7, 0.95), (1.0, 0.5), (0.3, 0.99)]:
        hf = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)])
        want = torch.softmax(hf(None, logits.clone()), dim=-1)
        assert torch.allclose(engine.warp(logits, temperature, top_p), want, atol=1e-6)


def test_top_p_zero_is_greedy_as_in_hf():
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(3))
    picked = engine.sample(logits.clone(), 0.7, 0.0, torch.rand(8, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(picked, logits.argmax(-1))


@pytest.mark.parametrize("scale", [6.0, 0.05])   # peaked (nucleus in the top 64) and flat (fallback)
def test_sampler_draws_follow_the_nucleus(scale):
    from scipy.stats import chisquare

    g = torch.Generator().manual_seed(1)
    row = torch.randn(1, 400, generator=g) * scale
    probs = engine.warp(row, 0.7, 0.95)[0]
    if scale < 1:
        assert int((probs > 0).sum()) > engine.TOPK_PREFILTER   # exercises the full-sort fallback
    n = 20000
    # the engine's own uniforms: one per (seed, sample, position), here n samples' first tokens
    u = engine.draws(2, torch.full((n,), 12345), torch.arange(n), torch.zeros(n, dtype=torch.long))
    draws = engine.sample(row.repeat(n, 1), 0.7, 0.95, u)
    counts = torch.bincount(draws, minlength=400).double()
    assert counts[probs == 0].sum() == 0                        # never outside the nucleus
    support = probs > 0
    expected = probs[support].double() * n
    big = expected >= 5                                         # chi-square needs >= 5 per cell
    obs = torch.cat([counts[support][big], counts[support][~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    exp = exp[keep] * obs[keep].sum() / exp[keep].sum()        # float32 probabilities: rescale to n
    assert chisquare(obs[keep].numpy(), exp.numpy()).pvalue > 1e-3


def test_sampler_scratch_and_bf16_logits_draw_as_fp32():
    """The engine hands `sample` bf16 logits and a reused fp32 scratch buffer: the draws must be
    those of the fp32 upcast without scratch (same uniforms), the logits left untouched, and
    the full-sort fallback rows (flat logits) included."""
    g = torch.Generator().manual_seed(5)
    logits = torch.cat([torch.randn(6, 400, generator=g) * 6.0, torch.randn(2, 400, generator=g) * 0.05])
    logits = logits.to(torch.bfloat16)
    before = logits.clone()
    u = torch.rand(8, generator=torch.Generator().manual_seed(9))
    want = engine.sample(logits.float(), 0.7, 0.95, u)
    scratch = torch.full((16, 400), float("nan"))   # stale contents must not leak into a draw
    got = engine.sample(logits, 0.7, 0.95, u, scratch)
    assert torch.equal(got, want)
    assert torch.equal(logits, before)
    assert torch.equal(engine.sample(logits, 0.7, 1.0, u, scratch), engine.sample(logits.float(), 0.7, 1.0, u))


def test_sampling_matches_hf_generate_and_is_seeded(tiny):
    from scipy.stats import chi2_contingency

    model, tok = tiny
    prompt = procedural_prompts(tok, 1, seed=9)
    n = 1200
    kw = dict(num_return_sequences=n, do_sample=True, temperature=0.7, top_p=0.95, max_new_tokens=2)
    hf = modeling.generate(model, tok, prompt, batch_size=1, seed=3, **kw)
    ours = engine.generate(model, tok, prompt, batch_size=n, seed=3, **kw)
    first = lambda g: [tok(t, add_special_tokens=False)["input_ids"][:1] for t in g.texts[0]]  # noqa: E731
    a, b = [tuple(x) for x in first(hf)], [tuple(x) for x in first(ours)]
    cats = sorted(set(a) | set(b))
    table = [[a.count(c) for c in cats], [b.count(c) for c in cats]]
    big = [i for i in range(len(cats)) if table[0][i] + table[1][i] >= 10]
    rest = [sum(table[r][i] for i in range(len(cats)) if i not in big) for r in (0, 1)]
    rows = [[table[r][i] for i in big] + ([rest[r]] if sum(rest) else []) for r in (0, 1)]
    assert len(big) >= 3
    assert chi2_contingency(rows).pvalue > 1e-3
    again = engine.generate(model, tok, prompt, batch_size=n, seed=3, **kw)
    other = engine.generate(model, tok, prompt, batch_size=n, seed=4, **kw)
    assert again.texts == ours.texts and other.texts != ours.texts


# --- the calculator -------------------------------------------------------------------------

@pytest.mark.parametrize("trace, written", [
    ("She pays 5*16 = <<5*16=", "80>>"),
    ("Total <<(3+4)*(2+(1+1))=", "28>>"),                  # nested parentheses
    ("<<2*<<3+4=", "7>>"),                                 # a nested annotation: the innermost open one
    ("Each gets <<10/4=", "2.5>>"),                        # division, exact decimal
    ("A third <<10/3=", "3.3333>>"),                       # non-terminating: 4 places
    ("<<1,200/3=", "400>>"),                               # thousands commas
    ("<<$12.50*2=", "25>>"),
    ("<<-3+5=", "2>>"),
    ("<<5*16=80>> then 3 more", None),                     # closed already: nothing to write
    ("<<5*16", None),                                      # never reaches '=' / never closes >>
    ("x = 5*16 =", None),                                  # no annotation open
    ("<<5/0=", None),                                      # division by zero
    ("<<5 apples + 3=", None),                             # not arithmetic
    ("<<(3+4=", None),                                     # unbalanced
])
def test_calculator_traces(trace, written):
    assert calculator.complete(trace) == written


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')", "open('x')", "2**10", "9**9**9", "(lambda: 1)()", "a+1",
    "1 if 1 else 2", "[1][0]", "().__class__", "1<2", "9" * 40, "1e300", "-1e300", "1e-300", "10**30*10**30", "1" + "*99999999999" * 5,
])
def test_calculator_refuses_unsafe_or_huge(expr):
    with pytest.raises(calculator.CalcError):
        calculator.evaluate(expr)


def test_calculator_is_exact():
    assert calculator.evaluate("0.1+0.2") == Fraction(3, 10)
    assert calculator.render(Fraction(3, 10)) == "0.3"
    assert calculator.render(Fraction(72)) == "72"


def _scripted(monkeypatch, script: list[int]) -> list[int]:
    """Make the engine's token choice follow `script` by completion position, on the production
    path: the real model runs its fused decode step (counted in the returned list), only the
    choice of the next token is overridden, so the calculator's hook sees what it sees in a run."""
    from tutorloop.inference.fused import LlamaDecoder

    steps: list[int] = []
    real_step, real_choose = LlamaDecoder.step, engine._Run.choose

    def step(self, *a, **kw):
        steps.append(1)
        return real_step(self, *a, **kw)

    def choose(self, logits, rows=None):
        real_choose(self, logits, rows)
        if logits.shape[0] != self.rows:          # a prefill: every admitted row starts the script
            return torch.full((logits.shape[0],), script[0], dtype=torch.long)
        return torch.tensor(script)[self.n_gen.clamp(max=len(script) - 1)]

    monkeypatch.setattr(LlamaDecoder, "step", step)
    monkeypatch.setattr(engine._Run, "choose", choose)
    return steps


def test_seeded_samples_do_not_depend_on_the_batch(tiny):
    """A sample is a function of (seed, prompt, sample index): alone or beside other prompts, in 2
    rows or 12, it is the same text (batch_size: auto resolves differently on other machines).
    In float64: fp32 GEMMs on some CPUs (the AVX-512 kernels on an AMD EPYC Zen 4) round by the
    batch's row count (~1e-7 on these logits), and on a random model's flat distribution such a
    near-tie flips a sorted inverse-CDF draw; at 1e-16 it cannot, so this checks the engine's own
    batch independence (per-row seeded draws, per-row passes), not the BLAS's."""
    model, tok = tiny
    model = copy.deepcopy(model).double()      # a copy: the fixture is shared by the module
    prompts = procedural_prompts(tok, 5, seed=3)
    kw = dict(num_return_sequences=2, do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=20, seed=11)
    wide = engine.generate(model, tok, prompts, batch_size=10, **kw)
    narrow = engine.generate(model, tok, prompts, batch_size=2, **kw)
    alone = engine.generate(model, tok, prompts[3:4], batch_size=4, **kw)
    assert wide.texts == narrow.texts and alone.texts[0] == wide.texts[3]
    assert len({t for ts in wide.texts for t in ts}) > 5          # they are samples, not one text
    twice = engine.generate(model, tok, prompts[3:4] * 2, batch_size=4, **kw)
    assert twice.texts[0] == wide.texts[3] and twice.texts[1] != twice.texts[0]   # a repeat samples anew
    other_seed = engine.generate(model, tok, prompts, batch_size=10, **{**kw, "seed": 12})
    assert other_seed.texts != wide.texts


def test_engine_calculator_overrides_wrong_arithmetic(tiny, monkeypatch):
    model, tok = tiny
    prompt = procedural_prompts(tok, 1, seed=11)
    script = tok("He pays <<5*16=72>>72 dollars.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    steps = _scripted(monkeypatch, script)
    off = engine.generate(model, tok, prompt * 2, num_return_sequences=2, max_new_tokens=40)
    assert steps, "the fused decode step must run (the production path)"
    on = engine.generate(model, tok, prompt * 2, num_return_sequences=2, max_new_tokens=40, calculator=True)
    assert all(t == "He pays <<5*16=72>>72 dollars." for ts in off.texts for t in ts)
    assert off.calculator_calls == 0
    for ts in on.texts:
        for t in ts:
            assert t.startswith("He pays <<5*16=80>>"), t
    assert on.calculator_calls == 4
    assert on.forced_tokens == 4 * len(tok("80>>", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("value, written", [
    (Fraction(1, 3), "0.3333"), (Fraction(-1, 3), "-0.3333"), (Fraction(5, 2), "2.5"),
    (Fraction(1, 100000), "0.00001"), (Fraction(1, 300000), None), (Fraction(-1, 300000), None),
])
def test_one_rounding_rule_for_the_calculator_and_the_teachers(value, written):
    """Never "0"/"-0" for a small non-zero value; the teachers' exact rendering is the same rule."""
    from tutorloop.teachers import arith

    if written is None:
        with pytest.raises(calculator.CalcError):
            calculator.render(value)
    else:
        assert calculator.render(value) == written
    exact = calculator.render(value) if written is not None and Fraction(written) == value else None
    if exact is not None:
        assert arith.fmt(value) == exact
    else:
        with pytest.raises(arith.NotRepresentable):
            arith.fmt(value)
    assert calculator.complete("<<1/300000=") is None and calculator.complete("<<0-1/3=") == "-0.3333>>"


def test_rows_that_all_end_in_their_prefill_do_not_stop_the_queue(tiny):
    """A model that says EOS first (a finished student, a bias toward stopping) ends every row at
    its prefill: the engine must still admit the queued prompts (it used to stop with a KeyError)."""
    import copy

    model, tok = tiny
    eager = copy.deepcopy(model)
    with torch.no_grad():
        bias = torch.zeros(eager.config.vocab_size)
        bias[tok.eos_token_id] = 50.0   # EOS wins every argmax
        eager.lm_head.bias = torch.nn.Parameter(bias)
    prompts = procedural_prompts(tok, 10)
    g = engine.generate(eager, tok, prompts, max_new_tokens=8, batch_size=4)
    assert [t[0] for t in g.texts] == [""] * 10 and g.new_tokens == 10   # one EOS each, nothing else


def test_prompts_fed_mid_run_decode_as_if_given_at_the_start(tiny):
    """`tutorloop serve`'s continuous batching: prompts added while others decode (`feed`),
    including after the run compacted its rows (they are regrown), sample exactly what one call
    with every prompt samples; each prompt is handed over when its last sample ends; a per-prompt
    cap ends that prompt's rows at its own length."""
    model, tok = tiny
    prompts, seeds = procedural_prompts(tok, 12, seed=8), list(range(100, 112))
    kw = dict(num_return_sequences=2, do_sample=True, temperature=0.9, top_p=0.95, max_new_tokens=32, batch_size=8)
    ref = engine.generate(model, tok, prompts, seeds=seeds, **kw)
    state = {"step": 0, "next": 2, "compacted": False}
    handed, when = {}, {}

    def feed(run):
        state["step"] += 1
        state["regrown"] = state.get("regrown", False) or (state["compacted"] and run.rows == run.full_rows)
        state["compacted"] |= run.rows < run.full_rows
        lo = state["next"]
        hi = 5 if state["step"] == 3 else 12 if state["compacted"] and lo >= 5 else lo
        if hi > lo:
            assert all(run.fits(len(tok(p, add_special_tokens=False)["input_ids"]), 32) for p in prompts[lo:hi])
            assert run.extend(prompts[lo:hi], seeds[lo:hi], [32] * (hi - lo)) == lo
            state["next"] = hi

    def on_prompt(i, texts, counts, reasons):
        handed[i], when[i] = texts, state["step"]

    longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    out = engine.generate(model, tok, prompts[:2], seeds=seeds[:2], feed=feed, on_prompt=on_prompt,
                          max_prompt_tokens=longest, **kw)
    assert state["compacted"] and state["regrown"] and state["next"] == 12, state   # compacted, then regrown
    assert out.texts == ref.texts and [handed[i] for i in range(12)] == ref.texts
    assert min(when.values()) < state["step"]                   # answered before the call ended
    # caps: prompts capped at 8 tokens in a 32-token run equal a run at max_new_tokens=8
    capped = engine.generate(model, tok, prompts[:4], max_new_tokens=32, batch_size=8, caps=[8, 32, 8, 32])
    short = engine.generate(model, tok, prompts[:4], max_new_tokens=8, batch_size=8)
    full = engine.generate(model, tok, prompts[:4], max_new_tokens=32, batch_size=8)
    assert capped.texts == [short.texts[0], full.texts[1], short.texts[2], full.texts[3]]
