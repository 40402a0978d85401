"""Text keys shared by dedup, contamination checks and the teachers."""

from __future__ import annotations

import re


def normalise(text: str) -> str:
    """Text key for duplicate detection: case, punctuation and spacing folded."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()
