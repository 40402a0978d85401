"""The team stack's PostgreSQL part, for real: MLflow and Prefect servers on a throwaway PostgreSQL.

infra/compose.yaml runs PostgreSQL, MLflow, Prefect and MinIO in containers; no Docker engine
runs on our machines, so this test runs the same servers as processes on loopback:

- a PostgreSQL cluster (Debian's postgresql: `initdb` in a temporary folder, a free port,
  password auth over TCP), given its roles and databases by the stack's own
  infra/postgres/init-databases.sh — the script the postgres container runs on first start;
- `mlflow server` with the `mlflow` database as backend store and a local folder as
  `--artifacts-destination`, proxied with `--serve-artifacts` (in the stack: a MinIO bucket);
- `prefect server start` on the `prefect` database.

Then, through the project's own code (tutorloop.runtime.tracking, components.register) and with the
project's tiny random test model: a round is logged (a parent run, nested evaluate/register stage
runs), two versions are registered, the second is promoted to `champion` by the paired McNemar
test on verdicts downloaded back through the server, and `models:/tutor@champion` loads. Checked
through MlflowClient and, underneath, with psql in PostgreSQL. On Prefect: a process work pool,
infra/prefect.yaml's `nightly` deployment (cron, pool, concurrency limit) deployed as infra/README.md
says, and a smoke flow run end to end by a process worker (`prefect worker start --run-once`).
A third, instant test checks compose.yaml against the project (variables, pins, versions, paths).

PostgreSQL refuses to run as root: as root the cluster runs as the `postgres` user (Debian's
package creates it) through runuser. The test skips, saying why, where PostgreSQL's server
binaries or that user are missing. 75-105 s on 2 cores shared with other jobs, most of it
server start-up (the MLflow server migrates a fresh database: ~25 s):

    .venv/bin/python -m pytest -q tests/test_team_stack.py
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT, free_port, write_eval

from tutorloop.eval.scoring import flat_metrics
from tutorloop.registry.promotion import scope_alias
from tutorloop.registry.version import register
from tutorloop.runtime import tracking

INFRA = ROOT / "infra"
INIT_SCRIPT = INFRA / "postgres" / "init-databases.sh"
POOL = "tutorloop-process"  # the work pool infra/prefect.yaml deploys to


def _pg_bindir() -> Path | None:
    """Where initdb/pg_ctl/postgres live: PATH, else Debian's /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    majors = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(majors[-1]).parent if majors else None


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


@dataclass
class Postgres:
    port: int
    superuser: str
    superpass: str
    passwords: dict[str, str]  # service role -> password (roles and databases share the name)

    def url(self, service: str, driver: str = "postgresql") -> str:
        # token_urlsafe passwords need no %-escaping in a URL
        return f"{driver}://{service}:{self.passwords[service]}@127.0.0.1:{self.port}/{service}"

    def run_psql(self, service: str, sql: str, database: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", service,
                               "-d", database or service, "-X", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                               "-c", sql], env={**os.environ, "PGPASSWORD": self.passwords[service]},
                              capture_output=True, text=True, timeout=60)

    def psql(self, service: str, sql: str) -> list[list[str]]:
        """Rows of `sql` run in the service's database as the service's own role."""
        out = self.run_psql(service, sql)
        assert out.returncode == 0, out.stderr
        return [line.split("\t") for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def postgres():
    bindir = _pg_bindir()
    if bindir is None or not shutil.which("psql"):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) or psql not found: "
                    "apt-get install postgresql (Debian's package) to run this test")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the cluster as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and runuser (util-linux) is missing")
        as_user = [runuser, "-u", "postgres", "--"]
    # Not pytest's tmp_path: its parent is private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="tutorloop-pg-"))
    data, log, pwfile = base / "data", base / "server.log", base / "pw"
    pg = Postgres(port=free_port(), superuser="tutorloop", superpass=secrets.token_urlsafe(16),
                  passwords={"mlflow": secrets.token_urlsafe(16), "prefect": secrets.token_urlsafe(16)})

    def run(args):
        return subprocess.run(as_user + args, capture_output=True, text=True, timeout=120)

    try:
        pwfile.write_text(pg.superpass + "\n")
        if as_user:
            for path in (base, pwfile):
                os.chown(path, pg_user.pw_uid, pg_user.pw_gid)
        # Password (scram) auth over TCP, as the services use it; trust only on the socket in `base`.
        init = run([str(bindir / "initdb"), "-D", str(data), "-U", pg.superuser, f"--pwfile={pwfile}",
                    "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"])
        assert init.returncode == 0, init.stderr
        # fsync off: a throwaway cluster need not survive a power cut, and the machine is busy.
        opts = f"-c listen_addresses=127.0.0.1 -p {pg.port} -k {base} -c fsync=off -c full_page_writes=off"
        start = run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start"])
        assert start.returncode == 0, f"{start.stderr}\n{_tail(log)}"
        # The stack's own init script, as the postgres image runs it, but over TCP as superuser.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "POSTGRES_USER"}
        env.update(PGHOST="127.0.0.1", PGPORT=str(pg.port), PGUSER=pg.superuser, PGPASSWORD=pg.superpass,
                   MLFLOW_DB_PASSWORD=pg.passwords["mlflow"], PREFECT_DB_PASSWORD=pg.passwords["prefect"])
        setup = subprocess.run(["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        assert setup.returncode == 0, setup.stderr
        yield pg
    finally:
        if (data / "postmaster.pid").exists():
            run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)


class Server:
    """A server subprocess in its own process group (its uvicorn workers stop with it)."""

    def __init__(self, name: str, args: list[str], env: dict, log: Path, health: str):
        self.name, self.log, self.health = name, log, health
        self._out = log.open("w")
        self._started = time.monotonic()
        self.proc = subprocess.Popen(args, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.seconds: float | None = None

    def wait(self, timeout: float = 150) -> "Server":
        """Until the health endpoint answers 200 (fails with the log's tail if it never does)."""
        import httpx

        while self.seconds is None:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log)}")
            if time.monotonic() - self._started > timeout:
                self.stop()
                pytest.fail(f"{self.name} not healthy after {timeout:.0f} s:\n{_tail(self.log)}")
            try:
                if httpx.get(self.health, timeout=2).status_code == 200:
                    self.seconds = time.monotonic() - self._started
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return self

    def _signal(self, sig: int) -> None:
        try:  # the whole group: a leader that died early may have left its workers behind
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a throwaway server need not drain its connections
            self._signal(signal.SIGKILL)
            self.proc.wait()
        self._out.close()


def _quiet_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def servers(postgres, tmp_path_factory):
    """MLflow and Prefect servers on the cluster, started together (both spend their start-up
    importing and migrating; on two cores that overlaps well). Each test waits for its own."""
    try:
        import psycopg2  # noqa: F401  - MLflow's SQLAlchemy needs it for postgresql:// URIs
    except ImportError:
        pytest.fail("psycopg2 is missing: `make install` (the test extra) installs psycopg2-binary")
    base = tmp_path_factory.mktemp("servers")
    mport, pport = free_port(), free_port()
    # The job runner serves MLflow's GenAI jobs (tutorloop runs none): one process fewer to start.
    mlflow = Server("mlflow server", [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres.url("mlflow"),
        "--artifacts-destination", str(base / "artifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(mport), "--workers", "1"],
        env=_quiet_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), log=base / "mlflow.log",
        health=f"http://127.0.0.1:{mport}/health")
    mlflow.url, mlflow.artifacts = f"http://127.0.0.1:{mport}", base / "artifacts"
    # PREFECT_SERVER_DATABASE_CONNECTION_URL is Prefect 3's name (PREFECT_API_DATABASE_... its alias).
    prefect = Server("prefect server", [
        sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(pport)],
        env=_quiet_env(PREFECT_HOME=str(base / "prefect-home"),
                       PREFECT_SERVER_DATABASE_CONNECTION_URL=postgres.url("prefect", "postgresql+asyncpg")),
        log=base / "prefect.log", health=f"http://127.0.0.1:{pport}/api/health")
    prefect.api = f"http://127.0.0.1:{pport}/api"
    # What a client of the team server (CLI, deploy, worker) runs with: its URL, no database.
    prefect.client_env = _quiet_env(PREFECT_HOME=str(base / "client-home"), PREFECT_API_URL=prefect.api)
    try:
        yield {"mlflow": mlflow, "prefect": prefect}
    finally:
        mlflow.terminate()  # both at once, then wait for each
        prefect.terminate()
        mlflow.stop()
        prefect.stop()


@pytest.fixture
def mlflow_server(servers):
    return servers["mlflow"].wait()


@pytest.fixture
def prefect_server(servers):
    return servers["prefect"].wait()


@pytest.fixture
def mlflow_global_uri(monkeypatch):
    """mlflow.set_tracking_uri (ensure_store calls it) is process-global and exports
    MLFLOW_TRACKING_URI: leave neither pointing at a server that stops with this module."""
    yield
    import mlflow

    mlflow.set_tracking_uri(None)  # then monkeypatch restores the variable as it was


@pytest.mark.slow
def test_round_logged_registered_and_promoted_on_postgres(postgres, mlflow_server, params_factory, tiny_model_dir,
                                                          tmp_path, monkeypatch, mlflow_global_uri):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # a project folder: registry/*.json land here, no mlflow.db may appear
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("TUTORLOOP_TRACKING", "on")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    params = params_factory()
    assert params.register_.log_model  # the default: weights go to the server's artifact store

    start = time.monotonic()
    exp_id = tracking.ensure_store(tmp_path)
    client = MlflowClient(tracking.tracking_uri())
    # The server, not this machine, places the artifacts (tutorloop/runtime/tracking.py says why).
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
    # Round 0 as flows.pipeline.round_flow records it: a parent run whose id the stages get from
    # TUTORLOOP_PARENT_RUN_ID; each stage's main() is replaced by the calls it makes.
    parent = client.create_run(exp_id, run_name="round-0", tags={
        "tutorloop.round": "0", "tutorloop.kind": "round"}).info.run_id
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    # base gets 10 of 40 right; round 0 solves 25 more and loses none: McNemar p = 2^-25
    records = {}
    for key, pattern in {"base": "1" * 10 + "0" * 30, "0": "1" * 35 + "0" * 5}.items():
        metrics_file, predictions = write_eval(tmp_path, key, pattern, protocol="team-stack-test", prefix="q")
        with tracking.stage_run("evaluate", params.evaluate.model_dump(), round_key=key) as log:
            log.metrics(flat_metrics(json.loads(metrics_file.read_text())))
            log.artifact(predictions, "eval")
        with tracking.stage_run("register", params.register_.model_dump(), round_key=key) as log:
            records[key] = register(params, key, tiny_model_dir, metrics_file, predictions,
                                        tmp_path / f"registry/{key}.json", log)
    client.set_terminated(parent, status="FINISHED")
    print(f"\nmlflow server up in {mlflow_server.seconds:.1f} s; round logged and registered in "
          f"{time.monotonic() - start:.1f} s")

    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    # the round's runs: the parent and its four nested stage runs
    runs = {r.info.run_name: r for r in client.search_runs([exp_id])}
    assert set(runs) == {"round-0", "evaluate@base", "register@base", "evaluate@0", "register@0"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent for name, r in runs.items() if name != "round-0")
    assert runs["evaluate@0"].data.metrics["accuracy"] == 35 / 40
    # registered and promoted: v1 first in its scope, v2 paired against v1's downloaded verdicts
    assert records["base"]["alias"] == "champion" and records["base"]["version"] == "1"
    assert records["0"]["alias"] == "champion" and records["0"]["previous_champion"] == "1"
    assert records["0"]["paired_n"] == 40 and records["0"]["only_new_right"] == 25
    assert records["0"]["p_value"] < 1e-6
    champion = client.get_model_version_by_alias("tutor", "champion")
    assert champion.version == "2" and champion.tags["round"] == "0" and champion.tags["promotion"] == "champion"
    assert champion.run_id == runs["register@0"].info.run_id
    scope = scope_alias(records["0"]["scope"])
    assert client.get_registered_model("tutor").aliases == {"champion": "2", scope: "2"}
    # the weights went through the server into its artifacts destination, and load back from it
    assert list(mlflow_server.artifacts.rglob("*.safetensors")) and list(mlflow_server.artifacts.rglob("predictions.jsonl"))
    loaded = mlflow.transformers.load_model("models:/tutor@champion", return_type="components")
    assert loaded["model"].config.vocab_size == len(loaded["tokenizer"])

    # ...and underneath, in PostgreSQL, as the `mlflow` role
    sql_runs = dict(postgres.psql("mlflow", "SELECT name, status FROM runs WHERE lifecycle_stage = 'active'"))
    assert sql_runs == {name: "FINISHED" for name in runs}
    assert postgres.psql("mlflow", "SELECT version FROM model_versions WHERE name = 'tutor' ORDER BY version") == [["1"], ["2"]]
    assert dict(postgres.psql("mlflow", "SELECT alias, version FROM registered_model_aliases WHERE name = 'tutor'")) == \
        {"champion": "2", scope: "2"}
    assert postgres.psql("mlflow", "SELECT value FROM model_version_tags WHERE name = 'tutor' AND version = 2 "
                                   "AND key = 'promotion'") == [["champion"]]
    # the init script keeps the services apart: Prefect's role cannot even connect here
    denied = postgres.run_psql("prefect", "SELECT 1", database="mlflow")
    assert denied.returncode != 0 and "permission denied" in denied.stderr


SMOKE_FLOW = '''
import os
from pathlib import Path

from prefect import flow, task


@task
def answer(x: int) -> int:
    return x + 41


@flow(name="team-smoke")
def smoke(out: str, x: int = 1) -> int:
    """Leaves proof that a worker's flow-run process ran it."""
    value = answer(x)
    Path(out).write_text(f"{value} {os.getpid()}")
    return value
'''

DEPLOY_SMOKE = '''
import sys
from prefect import flow
from prefect.deployments import run_deployment

# Its own work queue: the worker below then cannot pick up a `nightly` run (the real loop) even
# if the test happens to run at 03:00 UTC.
flow.from_source(source=sys.argv[1], entrypoint="smoke_flow.py:smoke").deploy(
    name="smoke", work_pool_name=sys.argv[2], work_queue_name="smoke", ignore_warnings=True)
run = run_deployment("team-smoke/smoke", parameters={"out": sys.argv[3]}, timeout=0)
print(run.id)
'''


@pytest.mark.slow
def test_prefect_on_postgres_deploys_nightly_and_a_process_worker_runs_a_flow(postgres, prefect_server, tmp_path):
    import httpx

    env = prefect_server.client_env

    def prefect(*args: str, cwd: Path = tmp_path) -> str:
        out = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    start = time.monotonic()
    prefect("work-pool", "create", POOL, "--type", "process")
    # infra/README.md's deployment step, from the project root, with the real infra/prefect.yaml.
    prefect("--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--name", "nightly", cwd=ROOT)
    def get(path: str) -> dict:  # the REST API, as the UI and the clients read it
        return httpx.get(prefect_server.api + path, timeout=30).raise_for_status().json()

    nightly = get("/deployments/name/tutorloop-loop/nightly")
    assert nightly["work_pool_name"] == POOL and nightly["entrypoint"] == "flows/pipeline.py:loop_flow"
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in nightly["schedules"]] == \
        [("0 3 * * *", "UTC", True)]
    assert nightly["global_concurrency_limit"]["limit"] == 1
    # resolved on the worker, when the run starts, not at deploy time
    assert nightly["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {
        "directory": "{{ $TUTORLOOP_PROJECT }}"}}]

    (tmp_path / "smoke_flow.py").write_text(SMOKE_FLOW)
    (tmp_path / "deploy_smoke.py").write_text(DEPLOY_SMOKE)
    proof = tmp_path / "proof.txt"
    deployed = subprocess.run([sys.executable, "deploy_smoke.py", str(tmp_path), POOL, str(proof)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    run_id = deployed.stdout.strip().splitlines()[-1]
    prefect("worker", "start", "--pool", POOL, "--work-queue", "smoke", "--run-once")
    flow_run = get(f"/flow_runs/{run_id}")
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    value, pid = proof.read_text().split()
    assert value == "42" and int(pid) != os.getpid()
    print(f"\nprefect server up in {prefect_server.seconds:.1f} s; pool, deployments and the worker's run "
          f"in {time.monotonic() - start:.1f} s")

    # ...and underneath, in PostgreSQL, as the `prefect` role
    assert postgres.psql("prefect", f"SELECT state_type FROM flow_run WHERE id = '{run_id}'") == [["COMPLETED"]]
    assert postgres.psql("prefect", f"SELECT type FROM work_pool WHERE name = '{POOL}'") == [["process"]]
    assert sorted(postgres.psql("prefect", "SELECT name FROM deployment")) == [["nightly"], ["smoke"]]


ROUND_ZERO = """
import sys
from flows.pipeline import round_flow
results = round_flow("0", sys.argv[1])
print("RESULT", [(r["stage"], r["ran"]) for r in results])
"""


@pytest.mark.slow
def test_a_placed_stage_runs_on_a_worker_in_its_workspace_and_the_flow_goes_on(
        postgres, prefect_server, mlflow_server, tmp_path, tiny_model_dir):
    """params.yaml `placement.stages: {sft: tutorloop-stage/worker}`: round 0's flow in workspace
    A pushes sft's inputs to the DVC remote and starts infra/prefect.yaml's `worker` deployment;
    a process worker runs it in workspace B (another clone, another machine's stand-in), whose
    outputs come back to A through the remote's run cache, and A's flow goes on to evaluate@0."""
    import httpx
    import yaml
    from conftest import copy_project, tiny_params
    from mlflow import MlflowClient

    env = dict(prefect_server.client_env, MLFLOW_TRACKING_URI=mlflow_server.url, TUTORLOOP_TRACKING="on")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    a, b, remote = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    copy_project(a)
    raw = tiny_params(tiny_model_dir)
    raw["placement"] = {"stages": {"sft": "tutorloop-stage/worker"}}
    (a / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(remote)],
                ["git", "add", "-A"], [*git, "commit", "-qm", "a project"]):
        subprocess.run(cmd, cwd=a, check=True, env=env)
    subprocess.run(["git", "clone", "-q", str(a), str(b)], check=True)

    def prefect(*args: str) -> None:
        out = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"

    # infra/prefect.yaml's comments, as the GPU machine's operator runs them
    prefect("work-pool", "create", "tutorloop-stage", "--type", "process")
    prefect("--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--name", "worker")
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "tutorloop-stage"],
                              cwd=b, env=dict(env, TUTORLOOP_PROJECT=str(b), PYTHONPATH=str(b)), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        (tmp_path / "round_zero.py").write_text(ROUND_ZERO)
        done = subprocess.run([sys.executable, str(tmp_path / "round_zero.py"), str(a)], cwd=a,
                              env=dict(env, PYTHONPATH=str(a)),
                              capture_output=True, text=True, timeout=900)
        # a changed knob makes sft stale again: the worker retrains it, A never does (it checked
        # out the lock's old outputs and trained locally before a review caught it)
        raw["sft"]["learning_rate"] = raw["sft"]["learning_rate"] / 2
        (a / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        again = subprocess.run([sys.executable, str(tmp_path / "round_zero.py"), str(a)], cwd=a,
                               env=dict(env, PYTHONPATH=str(a)), capture_output=True, text=True, timeout=900)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:   # its shutdown is not what this test is about
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\nworker:\n{_tail(tmp_path / 'worker.log')}"
    assert again.returncode == 0, f"{again.stdout[-3000:]}\n{again.stderr[-3000:]}"
    for out in (done, again):
        ran = dict(eval(out.stdout.split("RESULT", 1)[1]))
        assert ran["sft"] and ran["evaluate@0"] and ran["register@0"]   # the flow went on after the worker
    # both sft runs were the worker's: two stage flow runs, and the checkpoint A checked out is an
    # object B's cache made (B's own params.yaml and dvc.lock are put back after each run)
    runs = httpx.post(prefect_server.api + "/flow_runs/filter", timeout=30,
                      json={"flow_runs": {"name": {"any_": ["sft"]}}}).raise_for_status().json()
    assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    out_hash = yaml.safe_load((a / "dvc.lock").read_text())["stages"]["sft"]["outs"][0]["md5"]
    assert (b / ".dvc" / "cache" / "files" / "md5" / out_hash[:2] / out_hash[2:]).exists()
    assert subprocess.run(["git", "status", "--porcelain", "--", "params.yaml", "dvc.lock"], cwd=b,
                          capture_output=True, text=True, check=True).stdout == ""
    assert (a / "models" / "round-0" / "model.safetensors").exists()
    # two sft@0 runs (never a third trained in A), each nested under one of A's round-0 runs
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("tutorloop")
    sft_runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'sft@0'")
    rounds = {r.info.run_id for r in client.search_runs([exp.experiment_id],
                                                        filter_string="attributes.run_name = 'round-0'")}
    assert len(sft_runs) == 2 and all(r.data.tags["mlflow.parentRunId"] in rounds for r in sft_runs)


def test_only_a_tracking_server_chooses_the_artifact_root(mlflow_server, tmp_path, monkeypatch):
    """ensure_store leaves the artifact root to a server (teammates and register's paired-evidence
    download must reach the artifacts), and a local store keeps <project>/mlartifacts."""
    from mlflow import MlflowClient

    assert tracking.is_server("http://mlflow:5000") and tracking.is_server("HTTPS://team.example:443")
    assert not any(map(tracking.is_server, ["sqlite:///mlflow.db", "postgresql://u:p@db/mlflow",
                                            "file:///tmp/mlruns", "databricks", "/abs/mlruns"]))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"artifact-root-{uuid.uuid4().hex[:8]}")
    for uri, project in ((mlflow_server.url, tmp_path / "on-server"), (None, tmp_path / "local")):
        project.mkdir()
        if uri:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        else:
            monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        exp_id = tracking.ensure_store(project)
        location = MlflowClient(tracking.tracking_uri(project)).get_experiment(exp_id).artifact_location
        if uri:
            assert location.startswith("mlflow-artifacts:"), location     # the server's own root
        else:
            assert location == (project / "mlartifacts").as_uri()


def test_compose_file_agrees_with_the_project():
    """No Docker engine here to run infra/compose.yaml: cheap guards against drift instead."""
    import re

    import mlflow
    import prefect
    import yaml

    text = (INFRA / "compose.yaml").read_text()
    services = yaml.safe_load(text)["services"]
    # every variable it reads is in the template users copy (`$${X}` is the container's own)
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    template = {line.split("=", 1)[0] for line in (INFRA / ".env.example").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert used <= template, f"not in infra/.env.example: {sorted(used - template)}"
    # no value in the template is filled in: passwords come from each installation
    assert all(not line.split("=", 1)[1] for line in (INFRA / ".env.example").read_text().splitlines()
               if "PASSWORD" in line.split("=", 1)[0] or "SECRET" in line.split("=", 1)[0])
    # pinned images, and the servers' versions are the ones the project pins and tests against
    for name, service in services.items():
        tag = service["image"].rpartition(":")[2]
        assert "/" not in tag and tag not in ("", "latest"), f"{name}: unpinned image {service['image']}"
    assert services["prefect-server"]["image"] == f"prefecthq/prefect:{prefect.__version__}-python3.11"
    assert f"FROM ghcr.io/mlflow/mlflow:v{mlflow.__version__}\n" in (INFRA / "mlflow" / "Dockerfile").read_text()
    assert services["postgres"]["image"].startswith("postgres:15.")
    # the files it mounts and builds from exist
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume.startswith("./"):
                assert (INFRA / volume.split(":")[0]).exists(), volume
    assert (INFRA / services["mlflow"]["build"] / "Dockerfile").exists()
    assert (INFRA / services["worker"]["build"]["context"] / services["worker"]["build"]["dockerfile"]).exists()
    # the worker serves the pool that infra/prefect.yaml deploys to, and runs where it points
    deployment = yaml.safe_load((INFRA / "prefect.yaml").read_text())["deployments"][0]
    assert deployment["work_pool"]["name"] == POOL
    assert services["worker"]["command"][services["worker"]["command"].index("--pool") + 1] == POOL
    assert services["worker"]["environment"]["TUTORLOOP_PROJECT"] == "/project"
