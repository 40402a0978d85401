"""What this machine can do: the device, and the precision `runtime.precision: auto` resolves to.

bf16 pays only where the device computes it natively: CUDA GPUs with bf16 (Ampere and later) and
CPUs where oneDNN has bf16 kernels (AVX512-BF16, AMX). Elsewhere torch falls back to a scalar
reference GEMM for bf16: on a 2-core AMD EPYC with AVX2 only, a 1024x576x1536 matmul ran at
1.3 GFLOP/s in bf16 against 62.5 in fp32, and one LoRA SFT step of the student took 424 s under
bf16 autocast against 12 s in fp32. So `auto` asks torch what the CPU has
(`torch.ops.mkldnn._is_mkldnn_bf16_supported()`, the oneDNN query behind its bf16 kernels) and,
where the answer is yes, confirms it with a sub-second matmul probe (a query describes the
instruction set, not what a hypervisor lets through): bf16 only if it runs at least half as fast
as fp32. Where bf16 is native it runs faster than fp32, where it is not 10-48x slower (AVX2, one
busy core to two idle ones), so the margin cannot flip between two runs on one machine; plain
AVX-512 without BF16, where oneDNN emulates bf16, counts as not native before any probe.

The resolved precision is what a run's numbers depend on: stages record it in their metrics
(`precision`), and the evaluation protocol fingerprints it, so a champion is only compared with
models scored at the same numerics. Moving to a machine that resolves differently starts a new
evaluation scope (tutorloop/registry/promotion.py).

A stage resolves its runtime once (`resolve_runtime(params.runtime)`: torch's threads set, the
device picked, the precision resolved, the decode attention path chosen) and hands the frozen
`ResolvedRuntime` down to the library, which never re-resolves: what a stage loads, trains,
samples and records (metrics, the evaluation protocol) is that one value. `free_memory` and
`MEMORY_SHARE` are what both batch sizers (engine rows: tutorloop/inference/batching.py;
training batches: tutorloop/train/batching.py) budget from.

    tutorloop doctor          # this machine: capability, precision and why, matmul GFLOP/s

May import: tutorloop.errors (and torch). Nothing else of tutorloop: not even tutorloop.config
(`resolve_runtime` reads the section's four fields), so the stages that only load a model keep
config/ out of their DVC deps.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
from dataclasses import dataclass

import torch

from tutorloop.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROBE_N = 256          # a 256^3 matmul: ~1 ms in fp32 on one core, ~20 ms in scalar bf16
PROBE_MIN_RATIO = 0.5  # bf16 must run at least this share of fp32's GFLOP/s to be chosen
MEMORY_SHARE = 0.7     # of the free GPU memory, for a batch (engine rows or training examples)


@dataclass(frozen=True)
class Precision:
    """A resolved `runtime.precision` for one device."""

    dtype: str        # "float32" | "bfloat16": weights and activations at inference, autocast in training
    amp: str | None   # training's mixed precision: "bf16", "fp16" (CUDA without bf16) or None (plain fp32)
    reason: str       # one line: why this was chosen
    slow: bool = False  # True: asked for explicitly, but this device has no fast path for it

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_summary() -> str:
    """The CPU as timings name it: model name, family/model (an "AMD EPYC" VM is Zen 3 or Zen 4 by
    them), the bf16 instructions it has, and torch's capability: `AMD EPYC (family 25 model 17;
    avx512_bf16; AVX512)`."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    bf16 = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in fields.get("flags", "").split()]
    family = f"family {fields['cpu family']} model {fields['model']}; " if "cpu family" in fields else ""
    return f"{cpu_name()} ({family}{', '.join(bf16) or 'no bf16 instructions'}; {cpu_capability()})"


def cpu_capability() -> str:
    """torch's name for the widest vector ISA its CPU kernels use here (AVX2, AVX512, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def onednn_bf16() -> bool:
    """Whether this CPU computes bf16 natively: oneDNN has bf16 kernels *and* the CPU has
    AVX512-BF16 or AMX. oneDNN also says yes on plain AVX-512 (Skylake, Cascade Lake), where it
    emulates bf16 at ~0.25-0.5x fp32's speed: a probe there would sit near its threshold and could
    resolve differently from one stage's process to the next."""
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(native and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def matmul_gflops(dtype: torch.dtype, n: int = PROBE_N, repeats: int = 3) -> float:
    """GFLOP/s of an n x n x n matmul in `dtype` on the CPU: the best of `repeats` (after one warm-up)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / max(best, 1e-9) / 1e9


@functools.lru_cache(maxsize=None)
def cpu_bf16_fast() -> tuple[bool, str]:
    """(whether bf16 is a fast path on this CPU, why): the oneDNN query, confirmed by the probe."""
    if not onednn_bf16():
        return False, f"CPU capability {cpu_capability()}: no native bf16 kernels (oneDNN), bf16 would run a scalar GEMM"
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    if bf16 < PROBE_MIN_RATIO * fp32:
        return False, (f"oneDNN reports bf16, but a bf16 matmul ran at {bf16:.1f} GFLOP/s against "
                       f"{fp32:.1f} in fp32")
    return True, f"CPU capability {cpu_capability()} with native bf16 ({bf16:.0f} vs {fp32:.0f} GFLOP/s in fp32)"


def resolve(setting: str, device: torch.device | str) -> Precision:
    """What `runtime.precision: setting` means on `device`. A setting the device cannot do at all
    (bfloat16 on a GPU without bf16) is a ConfigError naming the key; bfloat16 forced on a CPU
    without native bf16 runs, marked slow (and said on stderr)."""
    device = torch.device(device)
    if device.type == "cuda":
        return _resolve_cuda(setting, device)
    if setting == "float32":
        return Precision("float32", None, "runtime.precision: float32")
    fast, why = cpu_bf16_fast()
    if setting == "bfloat16":
        if not fast:
            print(f"tutorloop: runtime.precision: bfloat16 on this CPU is the slow path ({why}); "
                  "auto would choose float32", file=sys.stderr)
        return Precision("bfloat16", "bf16", "runtime.precision: bfloat16" + ("" if fast else " (slow here)"),
                         slow=not fast)
    return Precision("bfloat16", "bf16", why) if fast else Precision("float32", None, why)


def _resolve_cuda(setting: str, device: torch.device) -> Precision:
    # native only: by default torch also says yes where bf16 is emulated (T4, V100)
    with torch.cuda.device(device):
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if setting == "bfloat16" and not bf16:
        raise ConfigError(f"runtime.precision: 'bfloat16' -> {torch.cuda.get_device_name(device)} has no bf16; "
                          "use auto or float32")
    if setting == "float32":
        return Precision("float32", None, "runtime.precision: float32")
    if bf16:
        return Precision("bfloat16", "bf16", f"{torch.cuda.get_device_name(device)} computes bf16")
    # a pre-Ampere GPU: fp32 weights, fp16 mixed precision in training
    return Precision("float32", "fp16", f"{torch.cuda.get_device_name(device)} has no bf16: fp32, fp16 AMP in training")


def set_threads(threads: int) -> int:
    """Pin torch's intra-op threads (0 = one per core) and quiet the tokenizers' own pool; the count set."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Two busy threads per core made a training step 12x slower: never exceed the core count.
    # sched_getaffinity honours cgroup/taskset limits; os.cpu_count() would count the host's cores.
    # The ranks of an `accelerate launch` on this machine (LOCAL_WORLD_SIZE) share its cores.
    share = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    count = threads or max(1, len(os.sched_getaffinity(0)) // share)
    torch.set_num_threads(count)
    return count


def pick_device(setting: str) -> str:
    """`runtime.device` as a torch device string: cuda when asked for, or auto with CUDA present."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        # one GPU per rank of an `accelerate launch` (tutorloop/runtime/distributed.py)
        return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"
    return "cpu"


@dataclass(frozen=True)
class ResolvedRuntime:
    """`runtime` (params.yaml) as this machine resolved it: one value per stage, resolved once
    (`resolve_runtime`) and passed down; what the stage's numbers depend on."""

    device: str            # torch device string: "cpu" | "cuda"
    precision: Precision   # the resolved `runtime.precision`: dtype, training amp, and why
    attention: str         # decode attention asked of the engine: "kernel" (the C kernel, where it builds and
                           # the model decodes through the fused step) | "sdpa" (torch's kernel)
    threads: int           # torch's intra-op threads, as set

    @property
    def dtype(self) -> str:
        """The weights' and activations' dtype at inference ("float32" | "bfloat16")."""
        return self.precision.dtype

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def resolve_runtime(cfg) -> ResolvedRuntime:
    """The one resolution of params.yaml's `runtime` section (a tutorloop.config.Runtime): torch's
    threads set (once, here), the device picked, the precision resolved on it (a ConfigError for
    one it cannot do), the decode attention path."""
    threads = set_threads(cfg.threads)
    device = pick_device(cfg.device)
    precision = resolve(cfg.precision, device)
    # The C kernel covers decode attention on CPU, in both dtypes a CPU resolves to (bf16, fp32);
    # on CUDA the engine always runs torch's SDPA. Whether the kernel builds here (a C compiler)
    # is the kernel loader's call at first use; the engine records which path ran.
    kernel = cfg.attention == "auto" and device == "cpu"
    return ResolvedRuntime(device=device, precision=precision, attention="kernel" if kernel else "sdpa",
                           threads=threads)


def free_memory(device: torch.device | str) -> int:
    """Bytes free on a CUDA device now (after the model was loaded)."""
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def describe(runtime: ResolvedRuntime, setting: str = "auto") -> list[tuple[str, str]]:
    """(what, value) rows about this machine for `tutorloop doctor`: CPU, capability, threads, the
    precision `runtime.precision: setting` resolved to on the runtime's device and why, and
    measured matmul GFLOP/s."""
    import importlib.metadata as md

    dev, chosen = runtime.torch_device, runtime.precision
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    fp32, bf16 = matmul_gflops(torch.float32, n=512), matmul_gflops(torch.bfloat16, n=512)
    versions = ", ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "trl", "peft"))
    return [
        ("cpu", f"{cpu_summary()}, {platform.machine()}"),
        ("torch cpu capability", f"{cpu_capability()}; oneDNN bf16 kernels: {'yes' if onednn_bf16() else 'no'}"),
        ("cores / torch threads", f"{cores} / {runtime.threads}"),
        ("device", dev.type + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")),
        (f"runtime.precision: {setting}", f"{chosen.dtype}" + (f", training amp {chosen.amp}" if chosen.amp else "")
         + (" (SLOW PATH on this machine)" if chosen.slow else "")),
        ("why", chosen.reason),
        ("matmul 512^3, CPU", f"fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s ({bf16 / fp32:.2f}x)"),
        ("versions", versions),
    ]
