"""Duplicate filter shared by `generate` and `followup`: exact and near-duplicate problems.

A library module, not a stage: `followup` used to import it from the `generate` stage, so editing
generate's code re-ran every followup. Near duplicates are word-3-gram Jaccard over normalised text.

    python -c "from tutorloop.data.dedup import Dedup; d = Dedup(0.8); print(d.verdict('Tom has 3.'), d.verdict('Tom has 3!'))"
"""

from __future__ import annotations

from collections import Counter

from tutorloop.data.text import normalise


class Dedup:
    """Exact (normalised text) and near duplicates (word-3-gram Jaccard >= threshold).

    By text alone in `generate` (`same_answer=False`): a variant that keeps the whole story and
    changes only the question sentence adds little text diversity to a training set, and data
    audits count it as a near-copy. `followup` passes `same_answer=True`: there an easier question
    on the very story the student failed is the point, so only a near-copy with the same answer
    counts.

    Candidates come from an index of the 3-grams that contain a number: two problems that are
    near-copies share most of those, while template-mates with other numbers share almost none,
    so the check stays near-linear instead of comparing all pairs.
    """

    def __init__(self, threshold: float, same_answer: bool = False) -> None:
        self.threshold, self.same_answer = threshold, same_answer
        self.exact: set[str] = set()
        self.grams: list[set] = []
        self.answers: list[str] = []
        self.index: dict[tuple, list[int]] = {}

    @staticmethod
    def _grams(key: str) -> set:
        w = key.split()
        return {tuple(w[i:i + 3]) for i in range(max(1, len(w) - 2))}

    def verdict(self, text: str, answer: str = "") -> str | None:
        """None if new (and remember it), else 'duplicate' or 'near_duplicate'."""
        key = normalise(text)
        if key in self.exact:
            return "duplicate"
        grams = self._grams(key)
        numbered = [g for g in grams if any(t.isdigit() for t in g)]
        seen = Counter(j for g in numbered for j in self.index.get(g, ()))
        for j, shared_numbered in seen.items():
            if shared_numbered * 2 < len(numbered):
                continue
            other = self.grams[j]
            if (not self.same_answer or self.answers[j] == answer) and len(grams & other) / len(grams | other) >= self.threshold:
                return "near_duplicate"
        self.exact.add(key)
        self.grams.append(grams)
        self.answers.append(answer)
        for g in numbered:
            self.index.setdefault(g, []).append(len(self.grams) - 1)
        return None
