"""Helpers several test files share (`from support import ...`: pytest puts tests/ on sys.path),
kept here rather than copied from file to file. Fixtures live in conftest.py.

    ROOT                 the repository root
    procedural_prompts   chat prompts of `n` procedural problems, as the engine tests feed them
    write_eval           what evaluate@<key> leaves: metrics/<key>.json and eval/<key>/predictions.jsonl
    free_port            a loopback port free now and never handed out before in this process
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def procedural_prompts(tok, n: int, seed: int = 5) -> list[str]:
    """Chat prompts ("Solve.", the question alone) of `n` procedural problems drawn with `seed`."""
    from tutorloop import modeling
    from tutorloop.teachers import ProceduralTeacher

    qs = [r["question"] for r in ProceduralTeacher().problems(n, seed=seed)]
    return modeling.chat_prompts(tok, qs, "Solve.", "{question}")


def write_eval(root: Path, key: str, pattern: str, protocol: str = "p0", prefix: str = "t") -> tuple[Path, Path]:
    """metrics/<key>.json and eval/<key>/predictions.jsonl under `root` for a run whose problem
    `<prefix><i>` is right where `pattern[i]` is "1"; the two paths."""
    from tutorloop.data.jsonl import write_jsonl

    n, correct = len(pattern), pattern.count("1")
    metrics = {"accuracy": correct / n, "n": n, "correct": correct, "ci95_low": 0.0, "ci95_high": 1.0,
               "family": {"ages": correct / n}, "protocol": protocol}
    (root / "metrics").mkdir(exist_ok=True)
    (root / f"metrics/{key}.json").write_text(json.dumps(metrics))
    write_jsonl(root / f"eval/{key}/predictions.jsonl",
                [{"id": f"{prefix}{i}", "correct": ch == "1"} for i, ch in enumerate(pattern)])
    return root / f"metrics/{key}.json", root / f"eval/{key}/predictions.jsonl"


_PORTS: set[int] = set()


def free_port() -> int:
    """A port free on loopback now, never one handed out before (the kernel may repeat itself)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS:
            _PORTS.add(port)
            return port
