"""Decode attention on CPU for the engine's fused step: a small C kernel, built at first use.

Two entry points: bf16 (the AVX-512 BF16 path where the CPU has it) and fp32 (for CPUs without
native bf16, where the engine runs in fp32: the portable loop on floats, vectorised with AVX2/FMA
or AVX-512 by -march=native; measured on an AMD EPYC (AVX2) at 128 rows x 3 kv heads x 3 groups
x 64 dims: 4.2 vs 8.1 ms a layer at 100 columns, 11.2 vs 16.3 at 250, against torch's fp32 SDPA).

At the engine's shapes (one query token per row, 3 query heads per kv head, ~200 columns, bf16)
torch's CPU flash kernel spends ~6 us per (row, kv-head) block, and attention was half of a
decode step. `tutorloop/inference/kernels/decode_attention.c` does one pass over K and one over V per block,
accumulating in fp32 (AVX-512 BF16 dot products where the CPU has them, software prefetch):
1.11 vs 2.16 ms a layer at those shapes, and more exact: its bf16 outputs are the correctly
rounded result for 99.99% of elements, torch's flash kernel's for ~61% (it rounds the softmax
weights to bf16 before multiplying V).

The kernel is compiled once per source, compiler flags and CPU (`-march=native`) into
~/.cache/tutorloop/kernels (or $TUTORLOOP_KERNEL_CACHE) with the system C compiler ($CC, else
cc), ~1 s; it is called through ctypes, so neither Python headers nor torch's C++ headers are
needed. Without a compiler, `load()` returns None and the engine keeps torch's SDPA (the stage
metrics record which one ran: `attention`).

tests/test_fused_decode.py checks it against float64 attention; `benchmarks/decode_profile.py` times
it inside the engine's decode steps.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode_attention.c")
# Reassociation lets the compiler vectorise the dot products and sums; no -ffast-math: masked
# columns are -inf, and finite-math-only would be allowed to drop them.
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fno-trapping-math",
         "-fassociative-math", "-fno-signed-zeros", "-fopenmp", "-shared", "-fPIC"]


def _cpu_signature() -> str:
    """-march=native code runs only on CPUs with the same instruction sets: key the cache on them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(cc: str, lib_path: Path, flags: list[str]) -> None:
    lib_path.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: processes building at once never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib_path.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise OSError(f"{cc} exited {done.returncode}: {' '.join(done.stderr.strip().splitlines()[-2:])}")
        os.replace(tmp, lib_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_dir() -> Path:
    return Path(os.environ.get("TUTORLOOP_KERNEL_CACHE", Path.home() / ".cache" / "tutorloop" / "kernels"))


# The builds: "native" takes the fastest path the CPU has; "portable" forces the plain C loop
# (tests run both where the host has AVX-512 BF16, so neither path goes untested).
VARIANTS = {"native": [], "portable": ["-DTUTORLOOP_PORTABLE"]}
ISA_NAMES = {0: "portable C loop", 1: "AVX-512 BF16"}


@functools.lru_cache(maxsize=2)
def load(variant: str = "native"):
    """The kernel's entry point, or None if it cannot be built here (no C compiler, not Linux/x86).
    `fn.isa` names the block implementation the build runs (ISA_NAMES)."""
    cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if cc is None or platform.machine() not in ("x86_64", "AMD64"):
        log.warning("decode attention: no C compiler (or not x86-64); the engine uses torch's SDPA")
        return None
    flags = FLAGS + VARIANTS[variant]
    try:
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *flags]).encode()
                             + _cpu_signature().encode()).hexdigest()[:16]
        lib_path = cache_dir() / f"decode_attention-{key}.so"
        if not lib_path.exists():
            _build(cc, lib_path, flags)
        # libgomp: the kernel's OpenMP binds to the runtime torch already loaded (same soname).
        lib = ctypes.CDLL(str(lib_path))
        fn, f32, isa = lib.decode_attention_bf16, lib.decode_attention_f32, lib.decode_attention_isa
    except (OSError, AttributeError, subprocess.SubprocessError) as e:
        # no source in this install, a failed build, a cache on a noexec mount, a stale library
        log.warning("decode attention: kernel unavailable (%s); the engine uses torch's SDPA", e)
        return None
    isa.restype = ctypes.c_int
    fn.isa = ISA_NAMES.get(isa(), "unknown")
    for entry in (fn, f32):
        entry.restype = ctypes.c_int
        entry.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_void_p, ctypes.c_int64,
                          ctypes.c_void_p] + [ctypes.c_int] * 6 + [ctypes.c_float])
    fn.f32 = f32   # the fp32 entry point (same arguments, float buffers)
    return fn


def usable(dtype: torch.dtype, device: torch.device) -> bool:
    """The kernel covers bf16 and fp32 on CPU where it builds; anything else (fp16, CUDA) stays on SDPA."""
    return (torch.device(device).type == "cpu" and dtype in (torch.bfloat16, torch.float32)
            and load() is not None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
              scale: float, variant: str = "native") -> torch.Tensor:
    """softmax(q k^T * scale, masked) v for one query token per row.

    q: [rows, kv_heads, groups, dim] (transformers' pack_gqa layout), k, v: [rows, kv_heads, L, dim]
    views with the same strides and contiguous rows of `dim`, mask: [rows, L] uint8/bool (nonzero =
    attend; a row that attends no column gets zeros). bf16 or fp32, all alike; returns q's dtype,
    [rows, kv_heads, groups, dim]."""
    rows, heads, groups, dim = q.shape
    L = k.shape[2]
    if (k.stride() != v.stride() or k.stride(3) != 1 or k.stride(2) != dim or k.shape != v.shape
            or tuple(k.shape[:2]) != (rows, heads) or k.shape[3] != dim
            or len({q.dtype, k.dtype, v.dtype}) != 1 or q.dtype not in (torch.bfloat16, torch.float32)
            or {q.device.type, k.device.type, v.device.type, mask.device.type} != {"cpu"}
            or tuple(mask.shape) != (rows, L) or mask.stride(1) != 1 or mask.dtype not in (torch.uint8, torch.bool)):
        raise ValueError(f"decode attention: unexpected layout q {tuple(q.shape)} k {tuple(k.shape)} "
                         f"strides {k.stride()} / {v.stride()}, mask {tuple(mask.shape)} {mask.dtype}")
    q = q.contiguous()
    out = torch.empty_like(q)
    # torch's thread count, passed explicitly: if the kernel's OpenMP is not torch's own runtime
    # (a clang build, a wheel with a renamed libgomp), it must not start a pool of its own size.
    fn = load(variant)
    rc = (fn if q.dtype == torch.bfloat16 else fn.f32)(q.data_ptr(), k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1), mask.data_ptr(),
                mask.stride(0), out.data_ptr(), rows, heads, groups, dim, L, torch.get_num_threads(),
                float(scale))
    if rc != 0:
        raise RuntimeError(f"decode attention failed (code {rc}: 1 = empty shape, 2 = out of memory)")
    return out

