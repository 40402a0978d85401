"""Training pieces shared by the `sft` and `dpo` stages: the LoRA adapter, the precision, the
batch per device, merging, resume.

Precision per device: on CPU the weights stay fp32 and TRL runs bf16 autocast (`use_cpu=True`,
~1.5x fp32 here). On CUDA the frozen base is loaded in bf16 (half the weight memory; autocast
computes its matmuls in bf16 anyway) with bf16 mixed precision, while the LoRA adapter stays fp32
(PEFT's `autocast_adapter_dtype`) — so the trained weights get fp32 updates. The adapter is then
merged into the base's *fp32* weights reloaded from disk (`merge_and_save_full_precision`): merged
into the bf16 copy, every weight of the saved model would be rounded to bf16, not just the delta.
A GPU without bf16 (pre-Ampere) keeps fp32 weights and trains with fp16 mixed precision.

Resume: a stage trains in a working folder keyed by a hash of everything that decides the run
(its params and the bytes of its inputs), under `.tutorloop-cache/train/` (or
$TUTORLOOP_TRAIN_DIR), saving a Trainer checkpoint every `save_steps` updates. A stage killed
mid-training (SIGTERM, OOM, a reboot) finds its folder on the next `dvc repro` and resumes from
the last checkpoint — model, optimizer, scheduler and RNG states — instead of starting over; a
changed knob or input gives a new key, so nothing stale is ever resumed. The folder is removed
once the merged model is saved.

A library module, not a stage: `dpo` used to import these from the `sft` stage, so editing the SFT
stage re-ran every preference round.

    python -m components.training        # the LoRA configs, dtypes and batches sft and dpo get here
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from components import batching
from components.config import Lora


def lora_config(cfg: Lora):
    from peft import LoraConfig

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")


def _cuda_bf16(device) -> bool:
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def train_dtype(device) -> str:
    """dtype the frozen base is loaded in for LoRA training: bf16 on a CUDA device with bf16,
    else fp32 (CPU: fp32 weights under bf16 autocast, as measured; old GPUs: fp16 AMP below)."""
    return "bfloat16" if _cuda_bf16(device) else "float32"


def trainer_precision(device) -> dict:
    """Mixed precision everywhere we can: on CPU TRL needs use_cpu=True for bf16 autocast (~1.5x
    fp32 here); on CUDA bf16, or fp16 where the GPU has no bf16 (TRL defaults bf16=True, which
    would fail there)."""
    if device.type == "cuda":
        bf16 = _cuda_bf16(device)
        return {"bf16": bf16, "fp16": not bf16}
    return {"use_cpu": True, "bf16": True}


def device_batch(setting: int | str, grad_accum: int, model, max_length: int, cpu_default: int,
                 pairs: bool = False) -> tuple[int, int]:
    """(per-device batch, grad_accum) for `batch_size: setting` on the model's device
    (components/batching.py: auto keeps batch x grad_accum the same on every device)."""
    return batching.train_batch(setting, grad_accum, device=model.device, cpu_default=cpu_default,
                                example_bytes=batching.train_example_bytes(model.config, max_length, pairs))


def merge_and_save_full_precision(peft_model, tok, out: str | Path, base: str | Path) -> None:
    """Fold the LoRA adapter in and save an fp32 checkpoint. If the frozen base was trained in a
    half dtype (CUDA), the adapter is merged into the fp32 weights of `base` (the checkpoint the
    training loaded) instead, so only the trained delta carries training-time rounding."""
    import copy

    import torch

    from components.modeling import load, merge_and_save

    frozen = next(p for n, p in peft_model.named_parameters() if "lora_" not in n)
    if frozen.dtype == torch.float32:
        merge_and_save(peft_model, tok, out)
        return
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    name = peft_model.active_adapter
    config = copy.deepcopy(peft_model.peft_config[name])
    state = {k: v.float() for k, v in get_peft_model_state_dict(peft_model, adapter_name=name).items()}
    full, _ = load(base, dtype="float32", device=frozen.device)
    fresh = get_peft_model(full, config, adapter_name=name)
    set_peft_model_state_dict(fresh, state, adapter_name=name)
    merge_and_save(fresh, tok, out)


def _digest(h, part) -> None:
    if isinstance(part, Path):
        files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
        for f in files:
            h.update(str(f.relative_to(part) if part.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    else:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())


def work_dir(stage: str, *parts) -> Path:
    """The resumable working folder of a training run decided by `parts` (params dicts, input
    files or folders, hashed by content)."""
    h = hashlib.sha256()
    for part in parts:
        _digest(h, part)
    root = Path(os.environ.get("TUTORLOOP_TRAIN_DIR", ".tutorloop-cache/train"))
    return root / f"{stage}-{h.hexdigest()[:16]}"


def checkpointing(save_steps: int) -> dict:
    """Trainer arguments: keep the newest checkpoint every `save_steps` updates (0 = never)."""
    if not save_steps:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1}


def last_checkpoint(work: Path) -> str | None:
    """The checkpoint a killed run left in `work`, to resume from; None = start fresh."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(work)) if work.is_dir() else None


if __name__ == "__main__":
    from components.config import load_params

    from transformers import AutoConfig

    from components.config import DPO_BATCH_CPU, SFT_BATCH_CPU
    from components.modeling import pick_device

    params = load_params()
    dev = pick_device(params.runtime.device)
    print("sft:", lora_config(params.sft.lora))
    print("dpo:", lora_config(params.dpo.lora))
    print(f"device {dev}: base in {train_dtype(dev)}, {trainer_precision(dev)}")
    base = params.checkpoints["base"]
    if Path(base, "config.json").exists():
        config = AutoConfig.from_pretrained(base)
        for name, cfg, cpu, pairs in (("sft", params.sft, SFT_BATCH_CPU, False), ("dpo", params.dpo, DPO_BATCH_CPU, True)):
            batch, accum = batching.train_batch(
                cfg.batch_size, cfg.grad_accum, device=dev, cpu_default=cpu,
                example_bytes=batching.train_example_bytes(config, cfg.max_length, pairs))
            print(f"{name}: batch_size {batch} x grad_accum {accum}")
