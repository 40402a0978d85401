"""Precision and batch per device for training: what dtype the frozen base is loaded in, which
mixed precision the trainer runs, and what `batch_size: auto` resolves to.
"""

from __future__ import annotations

from tutorloop.hardware import Precision
from tutorloop.inference import batching


def train_dtype(device, precision: Precision) -> str:
    """dtype the frozen base is loaded in for LoRA training: bf16 on a CUDA device whose resolved
    precision is bf16 (half the weight memory; autocast computes in bf16 anyway), else fp32 (on
    CPU the weights stay fp32, under bf16 autocast only where that is fast)."""
    return "bfloat16" if device.type == "cuda" and precision.dtype == "bfloat16" else "float32"


def trainer_precision(device, precision: Precision) -> dict:
    """The trainer's mixed precision, as `runtime.precision` resolved (tutorloop/hardware.py): bf16
    autocast where the device computes bf16 natively (on CPU TRL needs use_cpu=True for it), fp16
    AMP on a GPU without bf16, plain fp32 on a CPU without native bf16 (there bf16 autocast ran a
    scalar GEMM: 424 s a step against 12 s). TRL defaults bf16=True, so it is always set."""
    if device.type == "cuda":
        return {"bf16": precision.amp == "bf16", "fp16": precision.amp == "fp16"}
    return {"use_cpu": True, "bf16": precision.amp == "bf16"}


def device_batch(setting: int | str, grad_accum: int, model, max_length: int, cpu_default: int,
                 pairs: bool = False) -> tuple[int, int]:
    """(per-device batch, grad_accum) for `batch_size: setting` on the model's device
    (tutorloop/inference/batching.py: auto keeps batch x grad_accum the same on every device)."""
    return batching.train_batch(setting, grad_accum, device=model.device, cpu_default=cpu_default,
                                example_bytes=batching.train_example_bytes(model.config, max_length, pairs))
