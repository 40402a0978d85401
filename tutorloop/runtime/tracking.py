"""MLflow for the stages: one run per stage execution, nested under its round's parent run.

- Store: `MLFLOW_TRACKING_URI`, else ``sqlite:///<project>/mlflow.db``; artifacts go to
  ``<project>/mlartifacts`` (set on the experiment when it is created, so `mlflow ui` started in
  the project finds them) — except on a tracking server (an ``http(s)://`` URI, the team stack in
  infra/compose.yaml), which chooses the artifact root itself.
- Parent: the Prefect round flow opens the round's run and passes its id in
  `TUTORLOOP_PARENT_RUN_ID`. A stage of a DVC experiment (`dvc exp run`, so every recipe and
  `tutorloop seeds` arm; DVC names it in `DVC_EXP_NAME`) nests under its round's run, itself
  under one run per experiment, both found or made here: the UI shows `quick > round-1 >
  practice@1` as `tutorloop run` does. `dvc repro` by hand has neither and the stage run stands alone.
  A stage DVC skips never starts, so it logs nothing.
- `TUTORLOOP_TRACKING=off` turns all of this into a no-op (unit tests of a single stage).
- Secrets: only params and metrics we pass are logged; never the environment. Params, tags,
  texts and dicts pass through `config.redact` first (a `base_url` with `user:token@`, a pasted key).
- Ending: a stage run always ends. Success -> FINISHED; an exception -> FAILED (tag
  `tutorloop.error` says which, redacted) and re-raised; SIGINT (KeyboardInterrupt) and SIGTERM
  -> KILLED (tag `tutorloop.stopped_by`). SIGTERM's default action kills the process on the spot,
  which left runs RUNNING forever, so while a stage run is open SIGTERM raises `Terminated`
  instead (the previous handler comes back afterwards). `tutorloop.runtime.entry.run_main` then exits
  the way a signal would (the shell shows 143 / 130). With tracking off the handler is still
  installed: finally blocks and atomic writes clean up the same way.

    python -c "from tutorloop.runtime import tracking; print(tracking.ensure_store())"   # create it once
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tutorloop.runtime.signals import (
    Terminated,
    on_hard_stop,
    signals_deferred,
    sigterm_raises,
)
from tutorloop.secrets import redact

EXPERIMENT = "tutorloop"
PARENT_ENV = "TUTORLOOP_PARENT_RUN_ID"
DVC_EXP_ENV, DVC_BASELINE_ENV = "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"   # set by `dvc exp run` for its stages


def enabled() -> bool:
    return os.environ.get("TUTORLOOP_TRACKING", "on").lower() not in {"off", "0", "false"}


def tracking_uri(root: Path | None = None) -> str:
    """The tracking store: MLFLOW_TRACKING_URI, else mlflow.db in the project `root` (cwd)."""
    root = Path(root or Path.cwd()).resolve()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """Whether `uri` names a tracking server (REST over http/https) rather than a store."""
    return uri.split("://", 1)[0].lower() in {"http", "https"}


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)


def ensure_store(root: Path | None = None) -> str:
    """Create the tracking database and experiment once; returns the experiment id.

    Call before anything runs in parallel: concurrent first-time creation of the sqlite schema
    fails (2 of 3 tries in our measurements).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    root = Path(root or Path.cwd()).resolve()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment_name())
    if exp is not None:
        return exp.experiment_id
    # A tracking server places artifacts itself (`mlflow-artifacts:/`, proxied to its
    # --artifacts-destination): a file:// root chosen here would keep them on this machine, out
    # of reach of teammates and of register's paired-evidence download on any other machine.
    location = None if is_server(uri) else (root / "mlartifacts").as_uri()
    # the kind MLflow 3 offers for runs of a training loop (its UI picks its landing page from the
    # URL, see ui_urls; the tag keeps the experiment's kind right where a UI reads it)
    return mlflow.create_experiment(experiment_name(), artifact_location=location,
                                    tags={"mlflow.experimentKind": "custom_model_development"})


def ui_urls(base: str, exp_id: str, model: str = "tutor") -> dict[str, str]:
    """The MLflow UI pages a user opens first. MLflow 3.17's UI lands an experiment on its GenAI
    overview (traces, an assistant) unless the URL says `workflowType=machine_learning` (read
    before its localStorage switch `mlflow.workflowType_v1`; experiment tags are not read), and
    keeps that parameter on its links: so every URL carries it."""
    q = "?workflowType=machine_learning"
    base = base.rstrip("/")
    return {"runs": f"{base}/#/experiments/{exp_id}/runs{q}", "model": f"{base}/#/models/{model}{q}"}


def git_commit(root: Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=root).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


class StageLog:
    """What a stage may log; every method is a no-op when tracking is off."""

    def __init__(self, mlflow_module=None) -> None:
        self._mlflow = mlflow_module

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    @property
    def run_id(self) -> str | None:
        return self._mlflow.active_run().info.run_id if self._mlflow else None

    def params(self, params: dict) -> None:
        if self._mlflow:
            self._mlflow.log_params({k: redact(str(v))[:6000] for k, v in _flatten(params).items()})

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._mlflow:
            clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            self._mlflow.log_metrics(clean, step=step)

    def tags(self, tags: dict[str, Any]) -> None:
        if self._mlflow:
            self._mlflow.set_tags({k: redact(str(v)) for k, v in tags.items()})

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._mlflow and Path(path).exists():
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def json(self, obj: Any, name: str) -> None:
        if self._mlflow:
            self._mlflow.log_dict(redact(obj), name)

    def text(self, text: str, name: str) -> None:
        if self._mlflow:
            self._mlflow.log_text(redact(text), name)


def run_status(exc: BaseException | None) -> str:
    """The MLflow status a stage run ends with when `exc` (None: nothing) leaves it."""
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (None, 0)):
        return "FINISHED"
    if isinstance(exc, (KeyboardInterrupt, Terminated)):
        return "KILLED"
    return "FAILED"


def _end_run(mlflow, exc: BaseException | None, outer_id: str | None) -> None:
    """End the active run with the status `exc` calls for; a held stop request is raised after.

    `outer_id`: the run that was active before ours (None: none). If the active run is still that
    one, ours never started (start_run failed) or the stage ended it: end nothing, above all
    not a parent that belongs to the caller.
    """
    status = run_status(exc)
    with signals_deferred() as held:
        active = mlflow.active_run()
        if active is None or active.info.run_id == outer_id:
            return
        try:
            if status == "KILLED":
                mlflow.set_tag("tutorloop.stopped_by", "SIGINT" if isinstance(exc, KeyboardInterrupt)
                               else signal.Signals(exc.signum).name)
            elif status == "FAILED":
                mlflow.set_tag("tutorloop.error", redact(f"{type(exc).__name__}: {exc}")[:1000])
            mlflow.end_run(status)
        except Exception as err:  # noqa: BLE001
            if exc is None:
                raise
            # Never let a failing store hide the exception that is ending the stage.
            print(f"tutorloop: could not mark the MLflow run {status}: {redact(str(err))}", file=sys.stderr)
    if held and exc is None:  # asked to stop while a finished run was being written: stop now
        raise KeyboardInterrupt if held[0] == signal.SIGINT else Terminated(held[0])


@contextmanager
def stage_run(stage: str, params: dict, round_key: str | None = None) -> Iterator[StageLog]:
    """Open the MLflow run of one stage execution (nested when a parent id is in the env).

    The run ends FINISHED, FAILED (exception, re-raised) or KILLED (SIGINT/SIGTERM, re-raised as
    KeyboardInterrupt/Terminated); see the module docstring.
    """
    with sigterm_raises():
        if not enabled():
            yield StageLog(None)
            return
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        exp_id = ensure_store()
        containers = [] if os.environ.get(PARENT_ENV) else experiment_parent(exp_id, round_key)
        parent = os.environ.get(PARENT_ENV) or (containers[-1] if containers else None)
        name = stage if round_key is None else f"{stage}@{round_key}"
        reap_stale_runs(exp_id)
        tags = {"tutorloop.stage": stage, "tutorloop.git_commit": git_commit(), **process_tags()}
        if round_key is not None:
            tags["tutorloop.round"] = round_key
        outer = mlflow.active_run()
        outer_id = outer.info.run_id if outer is not None else None
        try:
            # start_run inside the try: a signal between creating the run and entering the block
            # must still end it.
            run = mlflow.start_run(experiment_id=exp_id, run_name=name, parent_run_id=parent,
                                   nested=parent is not None, tags=tags)
            log = StageLog(mlflow)
            log.params(params)
            with on_hard_stop(lambda signum: _mark_killed(run.info.run_id, signal.Signals(signum).name
                                                          + " (hard stop inside a long call)")):
                yield log
        except BaseException as exc:
            _end_run(mlflow, exc, outer_id)
            _stretch(containers)
            raise
        _end_run(mlflow, None, outer_id)
        _stretch(containers)


def experiment_parent(exp_id: str, round_key: str | None) -> list[str]:
    """[the experiment's run, its round's run] that a stage of a DVC experiment nests under (a
    control and evaluate@control-k in round k; base and the stages before SFT in round 0); []
    outside `dvc exp run`. Found by tags, else made: FINISHED containers whose end each stage
    stretches (`_stretch`), so their duration is the stages'; the stages carry the status."""
    name = os.environ.get(DVC_EXP_ENV)
    if not name:
        return []
    from mlflow import MlflowClient

    from tutorloop.config import control_round

    client = MlflowClient()
    common = {"tutorloop.dvc_exp": name, "tutorloop.dvc_baseline": os.environ.get(DVC_BASELINE_ENV, "")[:12]}
    top = _container(client, exp_id, name, {**common, "tutorloop.kind": "experiment"}, None)
    key = control_round(round_key or "") or (round_key if (round_key or "").isdigit() else "0")
    return [top, _container(client, exp_id, f"{name} round-{key}",
                            {**common, "tutorloop.kind": "round", "tutorloop.round": key}, top)]


def _stretch(containers: list[str]) -> None:
    """End the experiment's and the round's runs now: they span every stage run in them so far."""
    if not containers:
        return
    import time

    from mlflow import MlflowClient

    client, now = MlflowClient(), int(time.time() * 1000)
    for run_id in containers:
        try:
            client.set_terminated(run_id, status="FINISHED", end_time=now)
        except Exception as err:  # noqa: BLE001 - a container's end time never fails a stage
            print(f"tutorloop: could not update the MLflow run {run_id}: {redact(str(err))}", file=sys.stderr)


def _container(client, exp_id: str, run_name: str, tags: dict[str, str], parent: str | None) -> str:
    """The id of the run with these tags, made (nested under `parent`) if there is none yet."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([exp_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id
    extra = {"mlflow.parentRunId": parent} if parent else {}
    run = client.create_run(exp_id, run_name=run_name, tags={**tags, **extra,
                                                               "tutorloop.git_commit": git_commit()})
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


# --- runs whose process is gone -------------------------------------------------------------
#
# Nothing can handle SIGKILL or the OOM killer: such a stage leaves its run RUNNING for ever. Every
# run records the process that owns it (host, pid, the pid's start time: pids are reused), and each
# stage start (and `tutorloop doctor`) ends the runs of this host whose process is gone as KILLED,
# with the reason in `tutorloop.stopped_by`. Runs of other hosts are left alone: we cannot see
# their processes.

HOST_TAG, PID_TAG, STARTED_TAG = "tutorloop.host", "tutorloop.pid", "tutorloop.pid_started"


def process_tags(pid: int | None = None) -> dict[str, str]:
    """The tags naming the process that owns a run (default: this one)."""
    import psutil

    proc = psutil.Process(pid)
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(proc.pid), STARTED_TAG: f"{proc.create_time():.2f}"}


def process_alive(pid: int, started: float) -> bool:
    """Whether process `pid` still runs and is the one that started at `started` (not a reuse)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _mark_killed(run_id: str, reason: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, "tutorloop.stopped_by", reason)
    client.set_terminated(run_id, status="KILLED")


def reap_stale_runs(experiment_id: str, client=None) -> list[str]:
    """End as KILLED the RUNNING runs of this host whose recorded process is gone; their ids."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    host = socket.gethostname().replace("'", "")
    runs = client.search_runs([experiment_id], max_results=1000,
                              filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
    reaped = []
    for run in runs:
        tags = run.data.tags
        try:
            pid, started = int(tags[PID_TAG]), float(tags[STARTED_TAG])
        except (KeyError, ValueError):
            continue
        if not process_alive(pid, started):
            _mark_killed(run.info.run_id, f"process {pid} on {host} gone (killed, OOM or crashed); "
                                          f"ended by pid {os.getpid()}")
            reaped.append(run.info.run_id)
    return reaped


def trainer_callback(log: StageLog):
    """A transformers TrainerCallback that sends the trainer's logs (loss, lr, rewards) to `log`.

    Rather than `report_to="mlflow"`: HF's MLflowCallback logs all ~200 TrainingArguments as
    params and may end the active run itself; we want only the curves, in our stage run.
    """
    from transformers import TrainerCallback

    class _Callback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                log.metrics({f"train/{k}": v for k, v in logs.items()}, step=state.global_step)

    return _Callback()

