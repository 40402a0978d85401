"""Training stages on several processes: `accelerate launch` for `training.launcher: accelerate`.

A training stage (sft, preference, control) is started the usual way (`python -m components.sft
...`, by DVC or by hand). Where params.yaml says `training.launcher: accelerate`, the stage runner
replaces that process with `accelerate launch` of the same module and arguments
(`relaunch_under_accelerate`: exec, so the PID DVC and the flows signal *is* the launcher, and a
SIGTERM reaches torchrun's agent, which stops every rank). TRL's trainer then runs data-parallel
(DDP: NCCL on GPUs, gloo on CPUs), or FSDP / DeepSpeed ZeRO-3 where `training.accelerate_config`
names such a config (infra/accelerate/). In the launched processes only the main one (global
rank 0) opens the MLflow run, writes the stage's outputs and merges the adapter; the others train
and wait at the barriers (`is_main`, `barrier`).

On a CPU `accelerate launch --cpu` starts one process only (several need mpirun), so the launcher
uses torchrun's path (`--multi_gpu`), whose processes the trainer puts on the CPU with gloo
(TrainingArguments `use_cpu`, tutorloop/train/precision.py). Each rank then takes its share of
the cores (tutorloop/hardware.py `set_threads`).

May import: the standard library (torch lazily). Nothing of tutorloop: a leaf under runtime/.
"""

from __future__ import annotations

import os
import sys

LAUNCHED = "TUTORLOOP_LAUNCHED"   # set in the launched processes: never relaunch from inside one


def world_size() -> int:
    """Processes training together (1 outside a launch)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def local_world_size() -> int:
    """Processes of this launch on this machine (they share its cores)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's global rank (0 outside a launch)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """The process that logs, writes outputs and merges: global rank 0."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing outside a launch, or before the process group exists)."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def launch_command(module: str, argv: list[str], *, processes: int, machines: int = 1,
                   config_file: str = "", cpu: bool = False) -> list[str]:
    """`accelerate launch` of `python -m module argv` on `processes` processes per machine.

    `config_file` (an accelerate config: FSDP, DeepSpeed ZeRO-3, several machines) decides the
    distribution; without one it is plain DDP through torchrun (`--multi_gpu`, which on a CPU
    gives gloo processes, `cpu`)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes * machines),
           "--num_machines", str(machines)]
    if machines == 1 and not config_file:
        cmd += ["--main_process_port", str(free_port())]   # two launches on one machine never collide
    if config_file:
        cmd += ["--config_file", config_file]
    else:
        # The trainer sets its own precision (bf16/fp16 from runtime.precision): the launcher none.
        cmd += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if cpu:
            cmd += ["--monitor_interval", "1"]   # notice a dead rank within a second, not five
    return [*cmd, "-m", module, *argv]


def free_port() -> int:
    """A free loopback TCP port (the launch's rendezvous; benchmarks start servers on it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def relaunch_under_accelerate(module: str, argv: list[str], *, processes: int, machines: int = 1,
                              config_file: str = "", cpu: bool = False) -> None:
    """Replace this process with `accelerate launch` of the stage (does not return)."""
    cmd = launch_command(module, argv, processes=processes, machines=machines, config_file=config_file, cpu=cpu)
    os.environ[LAUNCHED] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # torchrun's default, said here; set_threads decides
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def launched() -> bool:
    """This process is one of a launch's ranks (so it must not launch again)."""
    return bool(os.environ.get(LAUNCHED)) or "LOCAL_RANK" in os.environ
