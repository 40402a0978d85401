"""runtime.precision: auto resolves by what the device computes natively (the queries patched),
the probe runs for real, and a precision the device cannot do is a one-line error."""

from __future__ import annotations

import pytest
import torch
from support import ROOT

from tutorloop import hardware
from tutorloop.errors import ConfigError


@pytest.fixture
def cpu(monkeypatch):
    """Patch the oneDNN query and the probe's two timings; the decision cache is cleared around."""
    def set_cpu(onednn: bool, fp32: float = 60.0, bf16: float = 120.0):
        monkeypatch.setattr(hardware, "onednn_bf16", lambda: onednn)
        monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype, **kw: bf16 if dtype == torch.bfloat16 else fp32)
        hardware.cpu_bf16_fast.cache_clear()

    yield set_cpu
    hardware.cpu_bf16_fast.cache_clear()


def test_auto_is_fp32_on_an_avx2_cpu(cpu):
    cpu(onednn=False)
    p = hardware.resolve("auto", "cpu")
    assert (p.dtype, p.amp, p.slow) == ("float32", None, False)
    assert "no native bf16" in p.reason


def test_auto_is_bf16_where_onednn_has_it_and_the_probe_agrees(cpu):
    cpu(onednn=True, fp32=60.0, bf16=110.0)   # AVX512-BF16 / AMX: bf16 faster than fp32
    p = hardware.resolve("auto", "cpu")
    assert (p.dtype, p.amp) == ("bfloat16", "bf16")


def test_auto_trusts_the_probe_over_the_query(cpu):
    cpu(onednn=True, fp32=60.0, bf16=1.3)   # the query says yes, the matmul says scalar GEMM
    p = hardware.resolve("auto", "cpu")
    assert p.dtype == "float32" and "1.3 GFLOP/s" in p.reason


def test_forced_bf16_on_avx2_runs_but_says_it_is_slow(cpu, capsys):
    cpu(onednn=False)
    p = hardware.resolve("bfloat16", "cpu")
    assert (p.dtype, p.slow) == ("bfloat16", True)
    assert "slow path" in capsys.readouterr().err
    assert hardware.resolve("float32", "cpu").dtype == "float32"


def test_cuda_with_and_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    monkeypatch.setattr(torch.cuda, "device", lambda d: __import__("contextlib").nullcontext())
    asked = {}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **k: asked.update(k) or False)
    p = hardware.resolve("auto", "cuda")
    assert asked == {"including_emulation": False}   # emulated bf16 (T4, V100) is not native
    assert (p.dtype, p.amp) == ("float32", "fp16")
    with pytest.raises(ConfigError, match=r"runtime.precision: 'bfloat16' -> Tesla V100 has no bf16"):
        hardware.resolve("bfloat16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert (hardware.resolve("auto", "cuda").dtype, hardware.resolve("auto", "cuda").amp) == ("bfloat16", "bf16")
    assert hardware.resolve("float32", "cuda").amp is None


def test_the_probe_counts_the_flops_of_its_best_pass(monkeypatch):
    """2 n^3 FLOPs over the fastest timed matmul (the warm-up is not timed): 2 x 64^3 in 1 ms is
    0.524 GFLOP/s; and bf16 counts as fast only at PROBE_MIN_RATIO of fp32's speed or more."""
    clock = iter([0.0, 0.003, 1.0, 1.001, 2.0, 2.002])   # three timed passes: 3, 1 and 2 ms
    monkeypatch.setattr(hardware.time, "perf_counter", lambda: next(clock))
    assert hardware.matmul_gflops(torch.float32, n=64) == pytest.approx(2 * 64 ** 3 / 1e-3 / 1e9)
    hardware.cpu_bf16_fast.cache_clear()
    monkeypatch.setattr(hardware, "onednn_bf16", lambda: True)
    speeds = {torch.float32: 100.0, torch.bfloat16: 100.0 * hardware.PROBE_MIN_RATIO - 1}
    monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype, *a, **k: speeds[dtype])
    fast, why = hardware.cpu_bf16_fast()
    assert not fast and f"{speeds[torch.bfloat16]:.1f} GFLOP/s against 100.0" in why
    hardware.cpu_bf16_fast.cache_clear()
    speeds[torch.bfloat16] = 400.0
    assert hardware.cpu_bf16_fast()[0] is True
    hardware.cpu_bf16_fast.cache_clear()


def test_doctor_prints_what_auto_resolves_to_and_why(cpu, monkeypatch):
    from typer.testing import CliRunner

    from tutorloop.cli import app

    cpu(onednn=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["doctor", "--project", str(ROOT)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.output.splitlines()
             if line.count("│") >= 3}
    assert lines["runtime.precision: auto"] == "float32"
    assert "no native bf16" in lines["why"]
    from tutorloop.inference.kernels import attention as decode_attention

    kernel = decode_attention.load() is not None   # fp32 has a kernel path too, where it builds
    assert "GFLOP/s" in lines["matmul 512^3, CPU"]
    assert lines["decode attention"].startswith("tutorloop's C kernel" if kernel else "torch SDPA")
    assert lines["stale runs"]


@pytest.mark.parametrize("onednn, cuda, size", [(False, False, "quick"), (True, False, "full"), (False, True, "full")])
def test_make_demo_is_sized_by_what_the_machine_computes_in(cpu, monkeypatch, onednn, cuda, size):
    """`tutorloop demo` (what `make demo` runs): the full loop where the machine computes in bf16
    or has a GPU, recipes/quick.yaml where the CPU computes in fp32 only; --size overrides."""
    from typer.testing import CliRunner

    from tutorloop.cli import loop as cli

    cpu(onednn=onednn)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(hardware, "_resolve_cuda", lambda setting, device: hardware.Precision("bfloat16", "bf16", "cuda bf16"))
    monkeypatch.setattr(cli, "doctor", lambda project: None)   # its table is tested above
    assert cli.demo_size(ROOT)[0] == size
    result = CliRunner().invoke(cli.app, ["demo", "--project", str(ROOT), "--dry-run"])
    assert result.exit_code == 0 and f"demo: {size} size" in result.output, result.output
    assert ("recipes/quick.yaml" in result.output) == (size == "quick")
    forced = CliRunner().invoke(cli.app, ["demo", "--project", str(ROOT), "--dry-run", "--size", "full"])
    assert "demo: full size, --size full" in forced.output
    assert CliRunner().invoke(cli.app, ["demo", "--project", str(ROOT), "--size", "huge"]).exit_code == 2
