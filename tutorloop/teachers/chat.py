"""The teacher's (and the judge's) chat backend as params.yaml configures it, behind the cache."""

from __future__ import annotations

from pathlib import Path

from tutorloop import hardware
from tutorloop.config import Runtime
from tutorloop.data.digest import digest
from tutorloop.llm.cache import CachedChat
from tutorloop.llm.client import Chat, OpenAIChat
from tutorloop.modeling import pick_device


def make_chat(cfg, cache_dir: str | Path, runtime: Runtime | None = None, what: str = "generate.teacher") -> CachedChat:
    """The backend `cfg` configures (params.yaml `what`: generate.teacher or feedback.judge),
    behind the disk cache; a local model runs on `runtime`'s device at its resolved precision."""
    runtime = runtime or Runtime()
    calc = cfg.kind == "transformers" and getattr(cfg, "calculator", False)
    kind = cfg.kind + ("+calculator" if calc else "")
    if cfg.kind == "openai":
        def factory() -> Chat:
            return OpenAIChat.of(cfg, what=what)
    elif cfg.kind == "transformers":
        dtype = hardware.resolve(runtime.precision, pick_device(runtime.device)).dtype
        device = runtime.device
        if dtype != "bfloat16":   # a local model's replies depend on its precision (bf16 keeps the old keys)
            kind += f"@{dtype}"

        def factory() -> Chat:
            from tutorloop.inference.chat import TransformersChat

            return TransformersChat(cfg.model, cfg.batch_size, dtype, device, calculator=calc)
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
