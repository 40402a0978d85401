"""Training stages under `accelerate launch` (training.launcher: accelerate; issue 36).

Two CPU processes (gloo) on the tiny model run the sft and preference (DPO) stages as DVC does
(`python -m components.sft ...` in a project folder): with the same global batch they end at the
merged weights one process ends at, one MLflow run holds one set of metrics, and a SIGTERM to the
stage's process (the launcher it became) ends both ranks, whose rerun resumes. What a GPU adds (NCCL, FSDP) is in
tests/test_cuda.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import tiny_params
from support import ROOT

PY = sys.executable
TOLERANCE = 2e-4   # max |w1 - w2| over the merged weights: fp32 sums in another order (gloo's all-reduce)


def project(tmp_path: Path, tiny_model_dir: Path, processes: int, epochs: float = 2, save_steps: int = 0) -> Path:
    """A project folder holding what the sft stage reads: params.yaml, models/base, the SFT rows."""
    from tutorloop.teachers import ProceduralTeacher

    ws = tmp_path / f"p{processes}-e{epochs}"
    raw = tiny_params(tiny_model_dir)
    raw["runtime"]["threads"] = 0          # each rank takes its share of the cores
    # global batch 4 x 2: one process accumulates 2 steps, two processes take one batch of 4 each
    raw["sft"].update(batch_size=4, grad_accum=2, epochs=epochs, save_steps=save_steps,
                      learning_rate=1e-2)
    raw["preference"].update(batch_size=4, grad_accum=2, save_steps=0)   # the same split for DPO's pairs
    raw["rounds"]["1"]["preference"].update(learning_rate=1e-2, epochs=epochs)
    raw["training"] = {"launcher": "accelerate" if processes > 1 else "none", "processes": processes,
                       "machines": 1, "accelerate_config": ""}
    (ws / "data").mkdir(parents=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copytree(tiny_model_dir, ws / "models" / "base")
    rows = ProceduralTeacher().problems(32, seed=11)
    (ws / "data" / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # round 1 from the base model: a pair per problem, the teacher's solution over a wrong answer
    shutil.copytree(tiny_model_dir, ws / "models" / "round-0")
    (ws / "data" / "round-1").mkdir()
    pairs = [{"question": r["question"], "chosen": r["solution"],
              "rejected": r["solution"].rsplit("####", 1)[0] + "#### 12345"} for r in rows[:16]]
    (ws / "data" / "round-1" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return ws


def env_for(ws: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TUTORLOOP_PARENT_RUN_ID", "MLFLOW_TRACKING_URI",
                                                            "MLFLOW_EXPERIMENT_NAME", "OMP_NUM_THREADS")}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", TUTORLOOP_TRACKING="on",
               TUTORLOOP_TRAIN_DIR=str(ws / "train"), MLFLOW_TRACKING_URI=f"sqlite:///{ws / 'mlflow.db'}")
    return env


SFT = ["-m", "components.sft", "models/base", "data/sft.jsonl", "models/sft"]
# (command, its MLflow run, the checkpoint it writes, the one it starts from)
STAGES = {"sft": (SFT, "sft@0", "models/sft", "models/base"),
          "preference": (["-m", "components.preference", "1", "models/round-0", "data/round-1", "models/round-1"],
                         "preference@1", "models/round-1", "models/round-0")}


def sft_runs(ws: Path, name: str = "sft@0") -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.info.run_name == name]


@pytest.mark.parametrize("stage", ["sft", "preference"])
def test_two_processes_train_what_one_trains_with_one_run_of_metrics(stage, tmp_path, tiny_model_dir):
    from tutorloop.modeling import load

    command, run_name, out, start = STAGES[stage]
    weights = {}
    for n in (1, 2):
        ws = project(tmp_path, tiny_model_dir, n)
        done = subprocess.run([PY, *command], cwd=ws, env=env_for(ws), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs = sft_runs(ws, run_name)
        assert len(runs) == 1, [r.info.run_name for r in runs]          # rank 1 opened no run
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["processes"] == n
        # the global batch is the configured 4 x 2 either way: two ranks accumulate 1 step each
        assert (run.data.metrics["batch_size"], run.data.metrics["grad_accum"]) == (4, 2 // n)
        history = mlflow_history(ws, run.info.run_id, "loss")
        assert len(history) == len({m.step for m in history})           # one value per step, not one per rank
        weights[n], _ = load(ws / out)
        assert not list((ws / "train").glob("*-*")), "the working folder is removed after the merge"
    base, _ = load(ws / start)
    one, two, start = weights[1].state_dict(), weights[2].state_dict(), base.state_dict()
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    apart = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"weights moved {moved:.2e} by training; 1 vs 2 processes {apart:.2e} apart")
    assert moved > 20 * TOLERANCE, (moved, apart)   # training moved the weights well past the tolerance
    assert apart < TOLERANCE, apart


def mlflow_history(ws: Path, run_id: str, key: str) -> list:
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}").get_metric_history(run_id, key)


def test_a_sigterm_ends_every_rank_and_the_rerun_resumes_where_they_stopped(tmp_path):
    # 100 updates of a model large enough that they take tens of seconds (the stop must land
    # mid-run even on a loaded machine), a complete checkpoint after each: stopped, then resumed
    from conftest import build_tiny_model

    model = build_tiny_model(tmp_path / "model", hidden=256, layers=4)
    ws = project(tmp_path, model, 2, epochs=25, save_steps=1)
    with open(ws / "log.txt", "w") as log:
        proc = subprocess.Popen([PY, *SFT], cwd=ws, env=env_for(ws), stdout=log, stderr=subprocess.STDOUT)
    ranks = wait_for_a_complete_checkpoint(ws, proc)
    proc.send_signal(signal.SIGTERM)      # what DVC and the flows send: the PID they started
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the launcher did not stop within 90 s: {(ws / 'log.txt').read_text()[-3000:]}")
    assert proc.returncode in (143, -signal.SIGTERM), (ws / "log.txt").read_text()[-3000:]
    alive = [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"ranks still running after the stop: {alive}"
    runs = sft_runs(ws)
    assert [r.info.status for r in runs] == ["KILLED"]        # rank 0 ended its run as stopped
    assert not (ws / "models" / "sft").exists()
    # both ranks resume from the last checkpoint marked complete (after every rank saved its part)
    done = subprocess.run([PY, *SFT], cwd=ws, env=env_for(ws), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rerun = [r for r in sft_runs(ws) if r.info.status == "FINISHED"]
    assert len(rerun) == 1 and 0 < rerun[0].data.metrics["resumed_from_step"] < 100, rerun
    assert (ws / "models" / "sft" / "model.safetensors").exists()


def wait_for_a_complete_checkpoint(ws: Path, proc: subprocess.Popen, timeout: float = 300) -> list:
    """The rank processes once a checkpoint is marked complete (both ranks are training and have
    saved their parts once)."""
    from tutorloop.train.resume import COMPLETE

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"stage exited ({proc.returncode}) early: {(ws / 'log.txt').read_text()[-3000:]}")
        if list((ws / "train").glob(f"sft-*/checkpoint-*/{COMPLETE}")):
            ranks = [p for p in psutil.Process(proc.pid).children(recursive=True)
                     if "components.sft" in " ".join(p.cmdline())]
            assert len(ranks) == 2, [p.cmdline() for p in ranks]
            return ranks
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no complete checkpoint within {timeout} s")


def test_the_launch_command_and_the_shipped_accelerate_configs():
    """What the stage execs, and infra/accelerate's configs as accelerate itself reads them."""
    from accelerate.commands.config.config_args import load_config_from_file

    from tutorloop.runtime.distributed import launch_command

    cpu = launch_command("components.sft", ["a", "b"], processes=2, cpu=True)
    assert cpu[1:3] == ["-m", "accelerate.commands.launch"] and cpu[-4:] == ["-m", "components.sft", "a", "b"]
    assert "--multi_gpu" in cpu and cpu[cpu.index("--num_processes") + 1] == "2"
    for name, kind in (("fsdp2.yaml", "FSDP"), ("zero3.yaml", "DEEPSPEED")):
        path = ROOT / "infra" / "accelerate" / name
        assert load_config_from_file(str(path)).distributed_type == kind   # unknown keys would raise
        cmd = launch_command("components.sft", [], processes=8, machines=2, config_file=str(path))
        assert cmd[cmd.index("--num_processes") + 1] == "16" and cmd[cmd.index("--config_file") + 1] == str(path)
        assert "--multi_gpu" not in cmd      # the config decides the distribution


def test_one_process_under_the_accelerate_launcher_trains_in_the_stage_itself(params_factory, monkeypatch):
    """processes 1 and no accelerate config: nothing to launch (torchrun's DDP path refuses a
    single process), so the stage trains in its own process; 2 processes relaunch."""
    from tutorloop.runtime import distributed, stage

    launched = []
    monkeypatch.setattr(distributed, "relaunch_under_accelerate", lambda *a, **k: launched.append(k))
    monkeypatch.delenv(distributed.LAUNCHED, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    one = params_factory(training={"launcher": "accelerate", "processes": 1, "machines": 1, "accelerate_config": ""})
    assert stage._relaunch(one, "components.sft", ["a"]) is False and launched == []
    two = params_factory(training={"launcher": "accelerate", "processes": 2, "machines": 1, "accelerate_config": ""})
    assert stage._relaunch(two, "components.sft", ["a"]) is True and launched[0]["processes"] == 2
