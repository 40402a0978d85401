"""The LoRA adapter every training stage trains, and merging it back into a full checkpoint.

Precision per device (`runtime.precision`, tutorloop/hardware.py): on CPU the weights stay fp32,
and TRL runs bf16 autocast (`use_cpu=True`, ~1.5x fp32 on AVX512-BF16) only where the CPU computes
bf16 natively; elsewhere plain fp32. On CUDA the frozen base is loaded in bf16 (half the weight memory; autocast
computes its matmuls in bf16 anyway) with bf16 mixed precision, while the LoRA adapter stays fp32
(PEFT's `autocast_adapter_dtype`) — so the trained weights get fp32 updates. The adapter is then
merged into the base's *fp32* weights reloaded from disk (`merge_and_save_full_precision`): merged
into the bf16 copy, every weight of the saved model would be rounded to bf16, not just the delta.
A GPU without bf16 (pre-Ampere) keeps fp32 weights and trains with fp16 mixed precision.
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.config import Lora


def lora_config(cfg: Lora):
    from peft import LoraConfig

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")


def merge_and_save_full_precision(peft_model, tok, out: str | Path, base: str | Path) -> None:
    """Fold the LoRA adapter in and save an fp32 checkpoint. If the frozen base was trained in a
    half dtype (CUDA), the adapter is merged into the fp32 weights of `base` (the checkpoint the
    training loaded) instead, so only the trained delta carries training-time rounding."""
    import copy

    import torch

    from tutorloop.modeling import load, merge_and_save

    frozen = next(p for n, p in peft_model.named_parameters() if "lora_" not in n)
    if frozen.dtype == torch.float32:
        merge_and_save(peft_model, tok, out)
        return
    from peft import (
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    name = peft_model.active_adapter
    config = copy.deepcopy(peft_model.peft_config[name])
    state = {k: v.float() for k, v in get_peft_model_state_dict(peft_model, adapter_name=name).items()}
    full, _ = load(base, dtype="float32", device=frozen.device)
    fresh = get_peft_model(full, config, adapter_name=name)
    set_peft_model_state_dict(fresh, state, adapter_name=name)
    merge_and_save(fresh, tok, out)


def merge_saved_adapter(adapter: str | Path, tok, out: str | Path, base: str | Path) -> None:
    """Fold an adapter saved by `trainer.save_model` (a multi-process run's, gathered from every
    rank) into the fp32 weights of `base` and save the checkpoint, on the CPU."""
    from peft import PeftModel

    from tutorloop.modeling import load, merge_and_save

    full, _ = load(base, dtype="float32", device="cpu")
    merge_and_save(PeftModel.from_pretrained(full, str(adapter)), tok, out)
