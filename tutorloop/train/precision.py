"""Precision and batch per device for training: what dtype the frozen base is loaded in, which
mixed precision the trainer runs, and what `batch_size: auto` resolves to.
"""

from __future__ import annotations

from tutorloop.inference import batching


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
    (tutorloop/inference/batching.py: auto keeps batch x grad_accum the same on every device)."""
    return batching.train_batch(setting, grad_accum, device=model.device, cpu_default=cpu_default,
                                example_bytes=batching.train_example_bytes(model.config, max_length, pairs))
