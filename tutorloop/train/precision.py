"""Precision per device for training: what dtype the frozen base is loaded in and which mixed
precision the trainer runs, from the stage's resolved runtime (tutorloop/hardware.py).
"""

from __future__ import annotations

from tutorloop.hardware import ResolvedRuntime


def train_dtype(runtime: ResolvedRuntime) -> str:
    """dtype the frozen base is loaded in for LoRA training: bf16 on a CUDA device whose resolved
    precision is bf16 (half the weight memory; autocast computes in bf16 anyway), else fp32 (on
    CPU the weights stay fp32, under bf16 autocast only where that is fast)."""
    return "bfloat16" if runtime.torch_device.type == "cuda" and runtime.precision.dtype == "bfloat16" else "float32"


def trainer_precision(runtime: ResolvedRuntime) -> dict:
    """The trainer's mixed precision, as `runtime.precision` resolved (tutorloop/hardware.py): bf16
    autocast where the device computes bf16 natively (on CPU TRL needs use_cpu=True for it), fp16
    AMP on a GPU without bf16, plain fp32 on a CPU without native bf16 (there bf16 autocast ran a
    scalar GEMM: 424 s a step against 12 s). TRL defaults bf16=True, so it is always set."""
    amp = runtime.precision.amp
    if runtime.torch_device.type == "cuda":
        return {"bf16": amp == "bf16", "fp16": amp == "fp16"}
    return {"use_cpu": True, "bf16": amp == "bf16"}
