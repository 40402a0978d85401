"""The teacher's (and the judge's) chat backend as params.yaml configures it, behind the cache."""

from __future__ import annotations

from pathlib import Path

from tutorloop.llm.cache import CachedChat
from tutorloop.llm.client import Chat, OpenAIChat


def make_chat(cfg, cache_dir: str | Path, device: str = "auto", what: str = "generate.teacher") -> CachedChat:
    """The backend `cfg` configures (params.yaml `what`: generate.teacher or feedback.judge),
    behind the disk cache."""
    calc = cfg.kind == "transformers" and getattr(cfg, "calculator", False)
    if cfg.kind == "openai":
        def factory() -> Chat:
            return OpenAIChat.of(cfg, what=what)
    elif cfg.kind == "transformers":
        def factory() -> Chat:
            from tutorloop.inference.chat import TransformersChat

            return TransformersChat(cfg.model, cfg.batch_size, cfg.dtype, device, calculator=calc)
    else:
        raise ValueError(f"teacher kind {cfg.kind!r} has no chat backend")
    # The calculator changes a local model's replies: it is part of the cache key (via kind).
    kind = cfg.kind + ("+calculator" if calc else "")
    return CachedChat(factory, Path(cache_dir) / "calls.sqlite", kind=kind, model=cfg.model)
