"""The n-gram contamination index shared by `decontaminate` and `followup`.

Both gates must judge overlap with the evaluation sets by one rule, so the index lives in this
library module (followup used to import it from the decontaminate stage, which re-ran every
followup whenever decontaminate's code changed).

    python -c "from tutorloop.data.contamination import EvalIndex; print(EvalIndex([{'question': 'a b c'}], 2).overlap('a b c d'))"
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict


def words(text: str) -> list[str]:
    """Lower-cased word tokens with punctuation dropped: "$1,234." and "1234" match."""
    return re.findall(r"[a-z0-9]+", text.lower().replace(",", ""))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    if len(w) < n:  # a text shorter than n words is compared whole
        return {tuple(w)} if w else set()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


class EvalIndex:
    """n-gram -> evaluation problems containing it, plus each problem's n-gram count."""

    def __init__(self, problems: list[dict], n: int) -> None:
        self.n = n
        self.index: dict[tuple[str, ...], set[int]] = defaultdict(set)
        self.sizes: list[int] = []
        for i, p in enumerate(problems):
            grams = ngrams(p["question"], n)
            self.sizes.append(len(grams))
            for g in grams:
                self.index[g].add(i)

    def overlap(self, question: str) -> float:
        """Largest overlap with one evaluation problem, as a share of the *smaller* of the two.

        Symmetric on purpose: a training question that embeds a whole benchmark question inside
        extra text covers all of the benchmark's n-grams even though they are a minority of its own.
        """
        grams = ngrams(question, self.n)
        hits: Counter[int] = Counter()
        for g in grams:
            hits.update(self.index.get(g, ()))
        return max((c / min(len(grams), self.sizes[i]) for i, c in hits.items()), default=0.0)
