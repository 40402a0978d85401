"""Prefect flows over the DVC stages: a flow per round, and the loop flow over all rounds.

A task runs one stage with ``dvc repro -s <stage>`` — DVC decides whether it is stale, so a flow
never re-implements a stage and Prefect's own task cache stays off (one cache: DVC's). Stages run
one at a time, under a file lock, because overlapping `dvc repro` runs fail ("is busy"), whether
they come from this flow or from a scheduled run that fires meanwhile. No retries: stages are
deterministic, and the teacher's flaky network calls retry inside the stage.

Which stages a round runs, and in what order, comes from DVC's own graph of dvc.yaml (`plan`),
not from a second copy of it here: a stage `name@k` belongs to round k when k is a round, stages
downstream of any round (report) run after the loop, and the rest (base_model ... register@0) are
round 0. Within a round, each sink (a stage nothing else in the round needs) runs after its
upstream stages, sinks in dvc.yaml order — so register@base precedes register@0, as promotion's
pairing needs (registry order is not a file dependency, so dvc.yaml's foreach order carries it).

MLflow: each round flow opens the round's parent run and hands its id to the stages through
`TUTORLOOP_PARENT_RUN_ID`; a round in which DVC ran nothing leaves no run behind.

A stage named in params.yaml `placement.stages` runs on a Prefect worker in another workspace
(`stage_flow`, deployed by infra/prefect.yaml as `tutorloop-stage/worker`): this flow pushes the
stage's inputs to the DVC remote and starts the deployment with this workspace's commit,
params.yaml and dvc.lock; the worker pulls the inputs, runs `dvc repro -s <stage>` and pushes the
outputs with DVC's run cache; back here, `dvc repro -s <stage>` finds that run in the run cache
and checks its outputs out instead of running it (and refuses to run it here if it is not there).

    python -m flows.pipeline          # the loop flow on params.yaml (what `tutorloop run` does)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.process import dvc, interpreter_env, run_group, workspace_lock
from tutorloop.config import control_round, load_params
from tutorloop.runtime import tracking

LOCK = ".tutorloop.lock"


AFTER_LOOP = "after"  # plan() key of the stages downstream of the rounds (report)


def plan(project: str | Path, rounds) -> dict[str, list[str]]:
    """{"0": [...], each round key: [...], "after": [...]}: every stage of dvc.yaml, grouped by
    round and ordered so that each stage runs after the stages it depends on."""
    import networkx as nx
    from dvc.repo import Repo

    rounds = [str(r) for r in rounds]
    with Repo(str(project)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        stages = list(repo.index.stages)
    index = {s: i for i, s in enumerate(stages)}
    name = {s: s.name for s in stages}  # "practice@1"; addressing would carry a path outside cwd

    def group(s) -> str:
        key = name[s].rpartition("@")[2] if "@" in name[s] else None
        if key is not None and control_round(key) is not None:   # evaluate@control-1 belongs to round 1
            key = control_round(key)
        if key in rounds:
            return key
        return AFTER_LOOP if any("@" in name[u] and name[u].rpartition("@")[2] in rounds
                                 for u in nx.descendants(graph, s)) else "0"

    groups = {s: group(s) for s in stages}
    out: dict[str, list[str]] = {k: [] for k in ["0", *sorted(rounds, key=int), AFTER_LOOP]}
    done: set = set()

    def visit(s) -> None:
        if s in done:
            return
        done.add(s)
        for dep in sorted((d for d in graph.successors(s) if groups[d] == groups[s]), key=index.get):
            visit(dep)
        out[groups[s]].append(name[s])

    for s in stages:  # sinks first, in dvc.yaml order; their upstream stages come before them
        if not any(groups[p] == groups[s] for p in graph.predecessors(s)):
            visit(s)
    return out


def _lock_entry(project: Path, stage: str) -> str:
    """A fingerprint of the stage's dvc.lock entry; it changes exactly when DVC ran the stage."""
    import yaml

    lock = project / "dvc.lock"
    if not lock.exists():
        return ""
    entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage)
    return hashlib.sha1(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()


def _stage_env(parent_run_id: str | None) -> dict[str, str]:
    # Stages run `python -m components...`: make it this interpreter even if the venv is not active.
    env = interpreter_env()
    env.pop(tracking.PARENT_ENV, None)
    if parent_run_id:
        env[tracking.PARENT_ENV] = parent_run_id
    return env


def _dvc_or_fail(root: Path, *args: str, env: dict[str, str] | None = None, why: str = "") -> None:
    code = run_group(dvc(*args), cwd=root, env=env or _stage_env(None))
    if code != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed with exit code {code}{why}")


def placed(root: Path, stage: str) -> str | None:
    """The Prefect deployment params.yaml `placement.stages` sends `stage` to; None = run it here."""
    from fnmatch import fnmatchcase

    if not (root / "params.yaml").exists():   # a DVC project without tutorloop's params: all here
        return None
    stages = load_params(root / "params.yaml").placement.stages
    return next((d for pattern, d in stages.items() if fnmatchcase(stage, pattern)), None)


@task(name="dvc-stage", cache_policy=NO_CACHE, retries=0, task_run_name="{stage}")
def dvc_stage(stage: str, parent_run_id: str | None = None, project: str = ".", push: bool = False) -> dict:
    """Run one DVC stage if stale, here or on the worker `placement.stages` names; returns
    {stage, ran, seconds}. `push`: then `dvc push` its outputs to the default remote, so another
    machine's workspace can `dvc pull` them."""
    from filelock import FileLock

    logger = get_run_logger()
    root = Path(project)
    with FileLock(str(root / LOCK)):
        before = _lock_entry(root, stage)
        start = time.perf_counter()
        deployment = placed(root, stage)
        if deployment and _stale(root, stage):
            _on_worker(root, stage, deployment, parent_run_id)
        _dvc_or_fail(root, "repro", "-s", stage, env=_stage_env(parent_run_id))
        seconds = time.perf_counter() - start
        ran = _lock_entry(root, stage) != before
        if push:
            _dvc_or_fail(root, "push", "-q", stage, why=" (is a default remote configured? `dvc remote list`)")
    logger.info("%s: %s in %.1f s%s", stage, "ran" if ran else "up to date", seconds,
                f" (on {deployment})" if deployment and ran else "")
    return {"stage": stage, "ran": ran, "seconds": seconds}


def _stale(root: Path, stage: str) -> bool:
    status = json.loads(subprocess.run(dvc("status", "--json", stage), cwd=root, env=_stage_env(None),
                                       capture_output=True, text=True, check=True).stdout or "{}")
    return stage in status


def _upstream(root: Path, stage: str) -> list[str]:
    """The stages whose outputs `stage` reads, directly or not (DVC's graph)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        node = next(s for s in repo.index.stages if s.name == stage)
        return sorted(s.name for s in nx.descendants(repo.index.graph, node))


def _on_worker(root: Path, stage: str, deployment: str, parent_run_id: str | None) -> None:
    """Run `stage` through the Prefect deployment `deployment` (`stage_flow` on a worker in another
    workspace) and fetch the run it leaves in the DVC remote's run cache; a failed or mismatched
    run raises (the stage is never silently run here instead)."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    upstream = _upstream(root, stage)
    if upstream:   # `dvc push` with no target would push everything
        _dvc_or_fail(root, "push", "-q", *upstream, why=" (a placed stage reads its inputs from the default DVC remote)")
    logger.info("%s: sent to %s", stage, deployment)
    run = run_deployment(deployment, timeout=None, parameters={
        "stage": stage, "commit": tracking.git_commit(root), "params_yaml": (root / "params.yaml").read_text(),
        "dvc_lock": (root / "dvc.lock").read_text() if (root / "dvc.lock").exists() else "",
        "parent_run_id": parent_run_id})
    if not run.state.is_completed():
        raise RuntimeError(f"{stage} on {deployment}: flow run {run.name} ended {run.state.type.value}: {run.state.message}")
    _dvc_or_fail(root, "fetch", "-q", "--run-cache")
    if not _in_run_cache(root, stage):
        raise RuntimeError(f"{stage}: the worker's run is not in the DVC run cache for this workspace's inputs "
                           "(another commit, params or data there?); not running it here")


def _in_run_cache(root: Path, stage: str) -> bool:
    """Check out `stage`'s outputs from a run in DVC's run cache on exactly this workspace's deps
    and params, pulling them from the remote; False where there is none (`dvc repro` then
    records the stage as run)."""
    from dvc.repo import Repo
    from dvc.stage.cache import RunCacheNotFoundError

    with Repo(str(root)) as repo, repo.lock:   # checking outputs out takes DVC's repo lock
        # restore() hashes the deps itself where they changed (saving them first would make it
        # check out the lock's old outputs instead of looking the new run up)
        target = next(s for s in repo.index.stages if s.name == stage)
        try:
            repo.stage_cache.restore(target, pull=True)
        except RunCacheNotFoundError:
            return False
    return True


def _write_or_remove(path: Path, text: str) -> None:
    """Write `text` to `path`; empty = no such file (an empty dvc.lock is not a valid one)."""
    if text:
        path.write_text(text)
    else:
        path.unlink(missing_ok=True)


@flow(name="tutorloop-stage", flow_run_name="{stage}")
def stage_flow(stage: str, commit: str, params_yaml: str, dvc_lock: str, parent_run_id: str | None = None,
               project: str = ".") -> dict:
    """One stage of a loop that runs in another workspace, on this worker's (a GPU machine's)
    checkout: the loop's params.yaml and dvc.lock, its inputs pulled from the DVC remote, then
    `dvc repro -s <stage>` and its outputs pushed with the run cache."""
    root = Path(project).resolve()
    with workspace_lock(root, f"the stage flow of {stage}"):
        here = tracking.git_commit(root)
        if here != commit:
            raise RuntimeError(f"this workspace ({root}) is at commit {here}, the loop at {commit}: "
                               f"`git fetch && git checkout {commit}` here first")
        kept = {name: (root / name).read_text() if (root / name).exists() else None
                for name in ("params.yaml", "dvc.lock")}
        try:
            _write_or_remove(root / "params.yaml", params_yaml)
            _write_or_remove(root / "dvc.lock", dvc_lock)
            upstream = _upstream(root, stage)
            if upstream:   # `dvc pull` with no target would pull everything
                _dvc_or_fail(root, "pull", "-q", *upstream)
            start = time.perf_counter()
            _dvc_or_fail(root, "repro", "-s", stage, env=_stage_env(parent_run_id))
            seconds = time.perf_counter() - start
            _dvc_or_fail(root, "push", "-q", "--run-cache", stage)
        finally:   # the worker's checkout as it was (a later `git checkout <commit>` must not refuse)
            for name, text in kept.items():
                _write_or_remove(root / name, text or "")
    get_run_logger().info("%s: ran in %.1f s on %s", stage, seconds, root)
    return {"stage": stage, "seconds": seconds, "workspace": str(root)}


@flow(name="tutorloop-round", flow_run_name="round-{round_key}")
def round_flow(round_key: str, project: str = ".", push: bool = False) -> list[dict]:
    """One round's stages in order, nested under one MLflow parent run."""
    from mlflow import MlflowClient

    root = Path(project).resolve()
    with workspace_lock(root, f"the round flow of round {round_key}"):
        # planned first: a plan that fails leaves no parent run behind, RUNNING for ever
        stages = plan(root, load_params(root / "params.yaml").rounds)[round_key]
        exp_id = tracking.ensure_store(root)
        client = MlflowClient(tracking.tracking_uri(root))
        parent = client.create_run(exp_id, run_name=f"round-{round_key}", tags={
            "tutorloop.round": round_key, "tutorloop.kind": "round",
            "tutorloop.git_commit": tracking.git_commit(root), **tracking.process_tags()}).info.run_id
        results = _round_stages(client, parent, stages, root, push)
    return results


def _round_stages(client, parent: str, stages: list[str], root: Path, push: bool) -> list[dict]:
    """Run a round's stages under its parent run, which ends FINISHED, FAILED, or deleted when
    DVC ran nothing."""
    results: list[dict] = []
    try:
        for stage in stages:
            results.append(dvc_stage(stage, parent, str(root), push))
    except BaseException:
        client.set_terminated(parent, status="FAILED")
        raise
    if any(r["ran"] for r in results):
        for r in results:
            client.log_metric(parent, f"seconds/{r['stage'].replace('@', '_at_')}", r["seconds"])
        client.set_terminated(parent, status="FINISHED")
    else:
        client.delete_run(parent)  # DVC ran nothing: nothing to record
    return results


@flow(name="tutorloop-loop")
def loop_flow(project: str = ".", push: bool = False) -> list[dict]:
    """Round 0 (base, data, SFT), then every round in params.yaml, then the report; `push`:
    each stage's outputs go to the DVC remote as soon as the stage is done."""
    params = load_params(Path(project) / "params.yaml")  # validate before any work
    with workspace_lock(project, "the loop flow"):
        results = round_flow("0", project, push)
        for key in sorted(params.rounds, key=int):
            results += round_flow(key, project, push)
        for stage in plan(Path(project).resolve(), params.rounds)[AFTER_LOOP]:
            results.append(dvc_stage(stage, None, project, push))
    return results


if __name__ == "__main__":
    loop_flow()
