"""The teacher's (and the judge's) chat backend as params.yaml configures it, behind the cache."""

from __future__ import annotations

from pathlib import Path

from tutorloop.data.digest import digest
from tutorloop.hardware import ResolvedRuntime
from tutorloop.llm.cache import CachedChat
from tutorloop.llm.client import Chat, OpenAIChat


def make_chat(cfg, cache_dir: str | Path, runtime: ResolvedRuntime | None = None,
              what: str = "generate.teacher") -> CachedChat:
    """The backend `cfg` configures (params.yaml `what`: generate.teacher or feedback.judge),
    behind the disk cache; a local model runs on the stage's resolved `runtime` (its device and
    precision; required for `kind: transformers`)."""
    calc = cfg.kind == "transformers" and getattr(cfg, "calculator", False)
    kind = cfg.kind + ("+calculator" if calc else "")
    if cfg.kind == "openai":
        def factory() -> Chat:
            return OpenAIChat.of(cfg, what=what)
    elif cfg.kind == "transformers":
        if runtime is None:
            raise ValueError(f"{what}.kind: transformers -> needs the stage's resolved runtime (hardware.resolve_runtime)")
        dtype = runtime.dtype
        if dtype != "bfloat16":   # a local model's replies depend on its precision (bf16 keeps the old keys)
            kind += f"@{dtype}"

        def factory() -> Chat:
            from tutorloop.inference.chat import TransformersChat

            return TransformersChat(cfg.model, runtime, cfg.batch_size, calculator=calc)
    else:
        raise ValueError(f"teacher kind {cfg.kind!r} has no chat backend")
    # The calculator changes a local model's replies: it is part of the cache key (via kind).
    return CachedChat(factory, Path(cache_dir) / "calls.sqlite", kind=kind, model=cache_name(cfg))


def cache_name(cfg) -> str:
    """The model's name in the cache key. A local folder or file is named by its *content* too:
    a model retrained into the same folder must not be answered with the old model's replies."""
    path = Path(cfg.model)
    if cfg.kind == "transformers" and path.exists():
        return f"{cfg.model}@{digest(path, length=16)}"
    return cfg.model
