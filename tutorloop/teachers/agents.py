"""The AgentInstruct agents on the offline path: Ask-Me-Anything, Suggester and Editor on graphs.

Orca-Math's agents are LLM prompts; here the same roles act on computation graphs
(`graph.py`) so the embedded teacher exercises the same flow the LLM path does (see `instruct.py`):

* **Ask-Me-Anything** (`ask_me_anything`): states the answer and asks for each given instead,
  and asks for each intermediate quantity (`graph.ask_variants`).
* **Suggester** (`suggest`): proposes 1-2 ways to make the problem harder — a percentage, an
  extra step, a unit conversion, a distractor, or chaining a second problem — as concrete,
  human-readable suggestions; it does not write the problem.
* **Editor** (`edit`): applies the suggestions to the graph, giving a new problem whose solution
  `graph.solve` derives. Two Suggester -> Editor rounds make `suggest-edit/1` and `/2`.

Every agent is deterministic given its `random.Random`, so a record's provenance (seed id and
agent path) rebuilds it exactly.

    python benchmarks/data_quality.py --n 200     # the agents at work, audited
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from fractions import Fraction

from tutorloop.teachers.graph import Graph, Reject, _cap, ask_variants
from tutorloop.teachers.procedural import FAMILIES, ITEMS, NAMES, build

# Kinds of edit the Suggester may propose (params.yaml generate.agents.edits may restrict them).
EDIT_KINDS = ("percent", "step", "convert", "distractor", "chain")

# unit -> (factor, new unit) for conversions a grade-school problem asks for
CONVERSIONS = {
    "hours": (Fraction(60), "minutes"),
    "weeks": (Fraction(7), "days"),
    "feet": (Fraction(12), "inches"),
    "money": (Fraction(100), "cents"),
    "minutes": (Fraction(1, 60), "hours"),
    "cm": (Fraction(10), "millimeters"),
}


@dataclass(frozen=True)
class Suggestion:
    """One way to make a problem harder: what the Suggester says, and what the Editor needs."""

    kind: str
    text: str
    params: dict = field(default_factory=dict, hash=False, compare=False)


def ask_me_anything(g: Graph, limit: int, rng: random.Random) -> list[Graph]:
    """Up to `limit` new problems from one seed, each asking for a different quantity."""
    variants = ask_variants(g)
    rng.shuffle(variants)
    out = []
    for v in variants:
        try:
            v.render()
        except Reject:
            continue  # e.g. asking for it needs a non-integer step
        out.append(v)
        if len(out) == limit:
            break
    return out


def _divisors(n: Fraction, lo: int = 2, hi: int = 8) -> list[int]:
    return [k for k in range(lo, hi + 1) if n.denominator == 1 and n.numerator % k == 0]


def suggest(g: Graph, rng: random.Random, kinds=EDIT_KINDS, count: int | None = None) -> list[Suggestion]:
    """1-2 applicable suggestions for making `g` harder (concrete numbers included)."""
    t = g.q[g.target]
    v = t.value
    options: list[Suggestion] = []
    other = rng.choice([n for n in NAMES if n != g.subject])
    if "percent" in kinds:
        if t.unit == "money":
            p = rng.choice([pp for pp in (10, 20, 25, 50) if v * pp / 100 == int(v * pp / 100)] or [0])
            if p:
                options.append(Suggestion("percent", f"Apply a {p}% coupon to {t.label} and ask what is paid.", {"p": p}))
        elif t.noun:
            ps = [pp for pp in (10, 20, 25, 50, 75) if (v * pp / 100).denominator == 1]
            if ps:
                p = rng.choice(ps)
                options.append(Suggestion("percent", f"Say {p}% of the {t.noun} are then sold and ask how many remain.",
                                          {"p": p}))
    if "step" in kinds:
        if t.unit == "money":
            ks = _divisors(v)
            if ks and rng.random() < 0.5:
                k = rng.choice(ks)
                options.append(Suggestion("step", f"Split {t.label} equally among {k} friends.", {"op": "split", "k": k}))
            else:
                fee = rng.randint(2, 15)
                options.append(Suggestion("step", f"Add a ${fee} delivery fee to {t.label}.", {"op": "fee", "k": fee}))
        elif t.noun:
            if v > 3 and rng.random() < 0.5:
                k = rng.randint(1, int(v) - 1)
                options.append(Suggestion("step", f"Have {g.subject} give away {k} of the {t.noun}.", {"op": "give", "k": k}))
            else:
                k = rng.randint(2, 20)
                options.append(Suggestion("step", f"Have {g.subject} get {k} more {t.noun}.", {"op": "more", "k": k}))
    converted = t.label.startswith("that in ")
    if converted:  # a converted answer only takes distractors: "that in cents" reads badly in a step
        kinds = [k for k in kinds if k == "distractor"]
        options.clear()
    if "convert" in kinds and t.unit in CONVERSIONS:
        factor, unit = CONVERSIONS[t.unit]
        if (v * factor).denominator == 1:
            shown = "dollars" if t.unit == "money" else t.unit
            options.append(Suggestion("convert", f"Ask for the answer in {unit} instead of {shown}.", {}))
    if "distractor" in kinds:
        one, many = rng.choice(ITEMS)
        sentence = rng.choice([f"{other} is {rng.randint(6, 60)} years old.",
                               f"{other} has {rng.randint(3, 40)} {many}.",
                               f"The shop is {rng.randint(2, 15)} miles from {g.subject}'s home."])
        options.append(Suggestion("distractor", f"Add a detail that does not matter: {sentence!r}",
                                  # first or last: in between, a later "It"/"them" would refer to it
                                  {"sentence": sentence, "at": rng.choice([0, len(g.parts)])}))
    if "chain" in kinds and t.unit in ("money", "hours", "miles", "minutes"):
        fams = [f for f in sorted(FAMILIES) if f != g.family]
        options.append(Suggestion("chain", "Chain a second situation and ask for the two results added together.",
                                  {"family": rng.choice(fams), "seed": rng.randint(0, 10**9)}))
    if not options:
        return []
    count = count or rng.choice([1, 1, 2])
    chosen = rng.sample(options, min(count, len(options)))
    return sorted(chosen, key=lambda s: s.kind == "convert")  # a conversion is always the last edit


def _percent(g: Graph, t, s: Suggestion) -> bool:
    """Edit `percent`: a percentage off (money) or sold (items) of the target. Returns whether the target moved."""
    h = g.fresh_key("hundred")
    g.const(h, 100)
    p = g.fresh_key("pct")
    if t.unit == "money":
        g.given(p, s.params["p"], "the coupon percentage", fact=f"A coupon takes {{v}}% off {t.label}.",
                ask="What percentage does the coupon take off?", unit="percent")
        g.derive(g.fresh_key("after"), f"{{{t.key}}}*({{{h}}}-{{{p}}})/{{{h}}}", "the amount after the coupon",
                 step="After the coupon it is {calc} dollars.", fact="After the coupon it is ${v}.",
                 ask="How much is paid after the coupon?", unit="money")
    else:
        g.given(p, s.params["p"], f"the percentage of the {t.noun} sold", fact=f"Then {{v}}% of the {t.noun} are sold.",
                ask=f"What percentage of the {t.noun} are sold?", unit="percent")
        g.derive(g.fresh_key("kept"), f"{{{t.key}}}*({{{h}}}-{{{p}}})/{{{h}}}", f"the {t.noun} not sold",
                 step=f"{{calc}} {t.noun} are not sold.", fact=f"{{v}} {t.noun} are not sold.",
                 ask=f"How many {t.noun} are not sold?", noun=t.noun)
    return True


def _step(g: Graph, t, s: Suggestion) -> bool:
    """Edit `step`: one more step on the target: split it, add a fee, give some away, or get more. Returns whether the target moved."""
    op, k = s.params["op"], s.params["k"]
    key = g.fresh_key("x")
    if op == "split":
        g.given(key, k, "the number of friends", fact=f"{_cap(t.label)} is shared equally by {{v}} friends.",
                ask="How many friends share the amount?")
        g.derive(g.fresh_key("each"), f"{{{t.key}}}/{{{key}}}", "each friend's share",
                 step="Each friend pays {calc} dollars.", fact="Each friend pays ${v}.",
                 ask="How much does each friend pay?", unit="money")
    elif op == "fee":
        g.given(key, k, "the delivery fee", fact=f"There is also a ${{v}} delivery fee on top of {t.label}.",
                ask="How much is the delivery fee?", unit="money")
        g.derive(g.fresh_key("with_fee"), f"{{{t.key}}}+{{{key}}}", "the amount with the fee",
                 step="With the fee it is {calc} dollars.", fact="With the fee it comes to ${v}.",
                 ask="How much is it including the delivery fee?", unit="money")
    elif op == "give":
        g.given(key, k, f"the {t.noun} given away", fact=f"Then {g.subject} gives away {{v}} of the {t.noun}.",
                ask=f"How many {t.noun} does {g.subject} give away?")
        g.derive(g.fresh_key("left"), f"{{{t.key}}}-{{{key}}}", f"the {t.noun} left",
                 step=f"{{calc}} {t.noun} are left.", fact=f"{{v}} {t.noun} are left.",
                 ask=f"How many {t.noun} are left after that?", noun=t.noun)
    else:
        g.given(key, k, f"the extra {t.noun}", fact=f"Later {g.subject} gets {{v}} more {t.noun}.",
                ask=f"How many more {t.noun} does {g.subject} get?")
        g.derive(g.fresh_key("more"), f"{{{t.key}}}+{{{key}}}", f"the {t.noun} in the end",
                 step=f"Then there are {{calc}} {t.noun}.", fact=f"In the end there are {{v}} {t.noun}.",
                 ask=f"How many {t.noun} are there in the end?", noun=t.noun)
    return True


def _convert(g: Graph, t, s: Suggestion) -> bool:
    """Edit `convert`: the same question answered in another unit. Returns whether the target moved."""
    factor, unit = CONVERSIONS[t.unit][:2]
    c = g.fresh_key("factor")
    g.const(c, factor.numerator if factor.denominator == 1 else factor.denominator)
    op = "*" if factor.denominator == 1 else "/"
    # the old question stays, now answered in the new unit (GSM8K asks "in minutes" too)
    g.derive(g.fresh_key("conv"), f"{{{t.key}}}{op}{{{c}}}", f"that in {unit}",
             step=f"In {unit} that is {{calc}}.", fact=f"That is {{v}} {unit}.",
             ask=f"{t.ask} Give the answer in {unit}.", unit=unit)
    return True


def _distractor(g: Graph, t, s: Suggestion) -> bool:
    """Edit `distractor`: an irrelevant sentence (the target stays). Returns whether the target moved."""
    g.parts.insert(s.params["at"], ("text", s.params["sentence"]))
    return False


def _chain(g: Graph, t, s: Suggestion) -> bool:
    """Edit `chain`: a second problem's answer added to the target. Returns whether the target moved."""
    other = build(s.params["family"], s.params["seed"])
    o_t = other.q[other.target]
    if o_t.unit != t.unit or other.subject == g.subject:
        raise Reject
    prefix = g.fresh_key("chain")  # unique: a second chain must not overwrite the first
    rename = {k: f"{prefix}_{k}" for k in other.q}
    for k, q in other.q.items():
        q = q.__class__(**{**q.__dict__, "key": rename[k]})
        for old, new_ in rename.items():  # placeholders in the relation and its step text
            q.expr = q.expr.replace(f"{{{old}}}", f"{{{new_}}}")
            q.step = q.step.replace(f"{{{old}}}", f"{{{new_}}}")
        g.q[q.key] = q
    g.parts += [(kind, rename[body] if kind == "fact" else body) for kind, body in other.parts]
    g.known |= {rename[k] for k in other.known}
    g.derive(g.fresh_key("both"), f"{{{t.key}}}+{{{rename[other.target]}}}",
             f"{t.label} plus {o_t.label}", step="Together that is {calc}.",
             fact="Together that is {v}.", ask=f"What is {t.label} plus {o_t.label}?", unit=t.unit)
    return True


EDITS = {"percent": _percent, "step": _step, "convert": _convert, "distractor": _distractor, "chain": _chain}


def edit(g: Graph, suggestions: list[Suggestion]) -> Graph:
    """A new problem: `g` with each suggestion applied in order. Raises Reject if one cannot be."""
    g = g.copy()
    for s in suggestions:
        if s.kind not in EDITS:
            raise ValueError(f"unknown edit {s.kind!r}")
        if EDITS[s.kind](g, g.q[g.target], s):
            g.target = new_key(g)
    g.render()  # raises Reject if the result is not a grade-school problem
    return g


def new_key(g: Graph) -> str:
    """The most recently added derived quantity (what an edit makes the new target)."""
    return [k for k, q in g.q.items() if q.kind == "derived"][-1]


def expand(seed_id: str, g: Graph, ama: int, rounds: int, kinds=EDIT_KINDS) -> list[tuple[str, Graph, list[str]]]:
    """All problems the agents make from one seed: (agent path, graph, suggestions applied)."""
    out = [("seed", g, [])]
    rng = random.Random(f"{seed_id}/ama")
    for i, v in enumerate(ask_me_anything(g, ama, rng) if ama else []):
        out.append((f"ama/{i + 1}", v, []))
    current = g
    for r in range(1, rounds + 1):
        rng = random.Random(f"{seed_id}/suggest/{r}")
        for _attempt in range(4):  # a suggestion that cannot be applied is redrawn, not fatal
            sugg = suggest(current, rng, kinds)
            if not sugg:  # nothing applicable (e.g. a converted answer without distractors)
                return out
            try:
                current = edit(current, sugg)
            except Reject:
                continue
            out.append((f"suggest-edit/{r}", current, [s.text for s in sugg]))
            break
        else:
            break
    return out
