"""Faults a team hits daily: a stage stopped by a signal, a stage that fails, a broken params.yaml.

Real processes, real signals: each test starts `python -m ...` in a fresh project folder with
its own sqlite MLflow store, waits (polling MLflow) until the stage's run is RUNNING, sends
SIGTERM or SIGINT, then checks the exit status and that the run ended KILLED / FAILED (before
this, SIGTERM left it RUNNING forever). `tests/fault_stage.py` is a stand-in stage that blocks on
demand; `components.decontaminate` is the real stage (no model: it blocks reading a FIFO as its
input). Bad input — a YAML syntax error, a bad value, a bad JSONL line — must be one
`tutorloop: <file>:<line>: <problem>` line per problem on stderr, exit code 2, no traceback.

A stopped stage dies by the signal it got (Popen: -15 / -2; a shell shows 143 / 130).

    python -m pytest -q tests/test_faults.py
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from support import ROOT

PY = sys.executable
START_TIMEOUT = 240  # seconds until a subprocess's run is RUNNING (mlflow import on 2 busy cores)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking store created once (first creation is slow and must not race)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tutorloop.runtime import tracking

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.ensure_store(root)
    mlflow.set_tracking_uri(previous)  # ensure_store sets it process-wide; leave other tests theirs
    return uri, MlflowClient(tracking_uri=uri)


@pytest.fixture
def params_dir(tmp_path) -> Path:
    """A project folder as a stage sees it: params.yaml (valid; tests break it) in the cwd."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def stage_env(store_uri: str | None, tracking: bool = True) -> tuple[dict, str]:
    """The subprocess environment (this worktree's `components` first) and its experiment name."""
    env = {k: v for k, v in os.environ.items() if k not in ("TUTORLOOP_PARENT_RUN_ID", "TUTORLOOP_TRACEBACK")}
    experiment = f"faults-{uuid.uuid4().hex[:8]}"  # one per test: runs never mix between tests
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_EXPERIMENT_NAME=experiment, TUTORLOOP_TRACKING="on" if tracking else "off")
    if store_uri:
        env["MLFLOW_TRACKING_URI"] = store_uri
    return env, experiment


def start(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    # SIGINT back to its default in the child: a pytest started in the background (`cmd &`) has
    # SIGINT ignored, the child would inherit that and Python would then never raise
    # KeyboardInterrupt. A terminal's Ctrl-C reaches a stage with the default disposition.
    return subprocess.Popen([PY, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process did not stop within {timeout}s\nstdout: {out}\nstderr: {err}")
    return proc.returncode, out, err


def running_run(client, experiment: str, proc: subprocess.Popen, run_name: str, ready=lambda run: True):
    """Wait until the subprocess's MLflow run exists, is RUNNING and `ready(run)`; return it."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"stage exited ({proc.returncode}) before its run started\n{out}\n{err}")
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
            if runs and runs[0].info.status == "RUNNING" and ready(runs[0]):
                return runs[0]
        time.sleep(0.25)
    proc.kill()
    pytest.fail(f"no RUNNING run {run_name!r} after {START_TIMEOUT}s: {proc.communicate()}")


def wait_for_line(proc: subprocess.Popen, text: str) -> None:
    """Block until the subprocess prints `text` on stdout (used with tracking off: no run to poll)."""
    line = proc.stdout.readline()
    if text not in line:
        out, err = proc.communicate()
        pytest.fail(f"expected {text!r}, got {line!r}\n{out}\n{err}")


def stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def assert_no_write_left(out: Path) -> None:
    """The interrupted atomic write left neither the output nor its temp file."""
    assert not out.exists()
    assert not list(out.parent.glob("*.tmp")), list(out.parent.iterdir())


# --- signals and exceptions end the MLflow run ----------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_marks_the_run_killed_and_the_process_dies_by_it(store, params_dir, sig):
    uri, client = store
    env, experiment = stage_env(uri)
    out = params_dir / "out" / "result.json"
    proc = start(["-m", "tests.fault_stage", "sleep", str(out)], params_dir, env)
    run = running_run(client, experiment, proc, "fault@sleep")
    wait_for_line(proc, "ready")  # inside the atomic write, not just inside the run
    proc.send_signal(sig)
    code, _, err = finish(proc)
    assert code == -sig, err  # killed by that signal: a shell shows 128 + signum (143 / 130)
    final = client.get_run(run.info.run_id)
    assert final.info.status == "KILLED"
    assert final.info.end_time is not None
    assert final.data.tags["tutorloop.stopped_by"] == signal.Signals(sig).name
    assert stderr_lines(err) == [f"tutorloop: stopped by {signal.Signals(sig).name}"]
    assert_no_write_left(out)


def test_an_exception_marks_the_run_failed_and_keeps_its_traceback(store, params_dir):
    uri, client = store
    env, experiment = stage_env(uri)
    out = params_dir / "out" / "result.json"
    code, _, err = finish(start(["-m", "tests.fault_stage", "raise", str(out)], params_dir, env), timeout=START_TIMEOUT)
    assert code == 1
    assert "Traceback" in err and "RuntimeError: a bug in the stage" in err  # a bug shows where it is
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["tutorloop.error"] == "RuntimeError: a bug in the stage"
    assert_no_write_left(out)


def test_bad_input_inside_a_run_is_failed_and_one_line(store, params_dir):
    uri, client = store
    env, experiment = stage_env(uri)
    out = params_dir / "out" / "result.json"
    code, _, err = finish(start(["-m", "tests.fault_stage", "bad-data", str(out)], params_dir, env),
                          timeout=START_TIMEOUT)
    assert code == 2
    assert stderr_lines(err) == [f"tutorloop: {params_dir / 'out' / 'missing.jsonl'}: no such file"]
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED"
    assert "DataError" in run.data.tags["tutorloop.error"]


def test_sigterm_with_tracking_off_still_stops_cleanly(params_dir):
    env, _ = stage_env(None, tracking=False)
    out = params_dir / "out" / "result.json"
    proc = start(["-m", "tests.fault_stage", "sleep", str(out)], params_dir, env)
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == -signal.SIGTERM, err
    assert stderr_lines(err) == ["tutorloop: stopped by SIGTERM"]
    assert_no_write_left(out)  # the exception unwound the write: SIGTERM's default would not
    assert not (params_dir / "mlflow.db").exists()


def test_real_stage_sigterm_marks_its_run_killed(store, params_dir):
    """`python -m components.decontaminate`, blocked reading its input (a FIFO nobody writes)."""
    uri, client = store
    env, experiment = stage_env(uri)
    generated = params_dir / "data" / "generated"
    generated.mkdir(parents=True)
    os.mkfifo(generated / "test.jsonl")
    proc = start(["-m", "components.decontaminate", str(generated), str(params_dir / "data" / "clean")], params_dir,
                 env)
    # params logged: past start_run and log_params, into run(), blocked in open() of the FIFO
    run = running_run(client, experiment, proc, "decontaminate", ready=lambda run: "ngram" in run.data.params)
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == -signal.SIGTERM, err
    assert stderr_lines(err) == ["tutorloop: stopped by SIGTERM"]
    final = client.get_run(run.info.run_id)
    assert final.info.status == "KILLED"
    assert final.data.params["ngram"] == "13"  # the same run the stage opened, params and all


def test_real_stage_bad_jsonl_is_one_line_and_a_failed_run(store, params_dir):
    uri, client = store
    env, experiment = stage_env(uri)
    generated = params_dir / "data" / "generated"
    generated.mkdir(parents=True)
    (generated / "test.jsonl").write_text('{"question": "1 + 1?"}\n{"question": "2 + 2?",\n')
    proc = start(["-m", "components.decontaminate", str(generated), str(params_dir / "data" / "clean")], params_dir,
                 env)
    code, _, err = finish(proc, timeout=START_TIMEOUT)
    assert code == 2
    [line] = stderr_lines(err)
    assert line.startswith(f"tutorloop: {generated / 'test.jsonl'}:2: not valid JSON"), line
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED"


# --- a malformed params.yaml: one line per problem, exit 2 ----------------------------------


def break_params(project: Path, how: str) -> int:
    """Break params.yaml in `project`; returns the 1-based line the error must name."""
    path = project / "params.yaml"
    lines = path.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("  learning_rate:"))  # sft's
    if how == "tab":
        lines[at] = "\t" + lines[at].lstrip(" ")
    elif how == "unclosed-bracket":
        lines[at] = "  learning_rate: [1.0e-3\n"
    elif how == "bad-value":
        lines[at] = "  learning_rate: -1\n"
    path.write_text("".join(lines))
    return at + 1


@pytest.mark.parametrize("how", ["tab", "unclosed-bracket", "bad-value"])
def test_real_stage_with_malformed_params_prints_one_line(params_dir, how):
    env, _ = stage_env(None, tracking=False)
    line_no = break_params(params_dir, how)
    proc = start(["-m", "components.decontaminate", "data/generated", "data/clean"], params_dir, env)
    code, out, err = finish(proc, timeout=START_TIMEOUT)
    assert code == 2, err
    [line] = stderr_lines(err)
    assert "Traceback" not in err and out == ""
    m = re.match(r"tutorloop: params\.yaml:(\d+)(?::(\d+))?: (.+)", line)
    assert m, line
    if how == "bad-value":
        assert int(m[1]) == line_no and m[3] == "sft.learning_rate: -1 -> Input should be greater than 0"
    elif how == "tab":
        assert (int(m[1]), m[2]) == (line_no, "1") and "'\\t'" in m[3]
    else:  # PyYAML notices the missing ']' on the next line; the line it opened is named too
        assert int(m[1]) == line_no + 1 and f"started at line {line_no}" in m[3]


def test_the_reported_evaluate_command_prints_one_line(store, params_dir):
    """The report: `python -m components.evaluate ...` with a broken params.yaml (imports torch)."""
    uri, _ = store
    env, _ = stage_env(uri)
    line_no = break_params(params_dir, "tab")
    proc = start(["-m", "components.evaluate", "0", "models/round-0", "data/generated/test.jsonl",
                  "metrics/0.json", "eval/0"], params_dir, env)
    code, _, err = finish(proc, timeout=START_TIMEOUT)
    assert code == 2
    assert stderr_lines(err) == [f"tutorloop: params.yaml:{line_no}:1: found character '\\t' that cannot "
                                 f"start any token (while scanning for the next token)"]


def test_every_problem_is_its_own_line_with_its_line_number_and_no_secret(params_dir):
    env, _ = stage_env(None, tracking=False)
    canary = "sk-canary-faults-0a1b2c3d"
    raw_text = (params_dir / "params.yaml").read_text()
    raw_text = raw_text.replace("api_key_env: OPENAI_API_KEY", f"api_key_env: {canary}", 1)
    raw_text = re.sub(r"^  n_test: .*$", "  n_test: 0", raw_text, count=1, flags=re.M)
    (params_dir / "params.yaml").write_text(raw_text)
    code, out, err = finish(start(["-m", "components.inputs", "data/inputs"], params_dir, env), timeout=START_TIMEOUT)
    assert code == 2 and out == ""
    lines = stderr_lines(err)
    text = raw_text.splitlines()
    want = {"generate.teacher.api_key_env": next(i for i, t in enumerate(text, 1) if canary in t),
            "generate.n_test": next(i for i, t in enumerate(text, 1) if t == "  n_test: 0")}
    assert len(lines) == 2 and canary not in err
    for line in lines:
        m = re.match(r"tutorloop: params\.yaml:(\d+): ([\w.]+): ", line)
        assert m and want[m[2]] == int(m[1]), line


# --- in-process: the pieces the subprocess tests rely on ------------------------------------


def test_stage_run_restores_the_previous_sigterm_handler(monkeypatch):
    import threading

    from tutorloop.runtime import signals, tracking

    monkeypatch.setenv("TUTORLOOP_TRACKING", "off")
    mine = lambda signum, frame: None  # noqa: E731
    old = signal.signal(signal.SIGTERM, mine)
    try:
        with tracking.stage_run("x", {}):
            assert signal.getsignal(signal.SIGTERM) is signals._raise_terminated
            with tracking.stage_run("y", {}):  # nested: still ours, and the outer one restores
                pass
            assert signal.getsignal(signal.SIGTERM) is signals._raise_terminated
        assert signal.getsignal(signal.SIGTERM) is mine
        with pytest.raises(signals.Terminated):
            with tracking.stage_run("x", {}):
                signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is mine
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ignored on purpose stays ignored
        with tracking.stage_run("x", {}):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        errors = []  # from a worker thread signal.signal() raises: stage_run must not try

        def in_thread():
            try:
                with tracking.stage_run("x", {}):
                    pass
            except Exception as err:  # noqa: BLE001
                errors.append(err)

        t = threading.Thread(target=in_thread)
        t.start()
        t.join()
        assert errors == []
    finally:
        signal.signal(signal.SIGTERM, old)


def test_run_status():
    from tutorloop.runtime.tracking import Terminated, run_status

    assert run_status(None) == "FINISHED" and run_status(SystemExit(0)) == "FINISHED"
    assert run_status(KeyboardInterrupt()) == "KILLED" and run_status(Terminated()) == "KILLED"
    assert run_status(SystemExit("generate: bad key")) == "FAILED" and run_status(ValueError()) == "FAILED"


def test_yaml_errors_name_file_line_and_column_and_never_echo_the_text(tmp_path):
    from tutorloop.config import ConfigError, load_params

    canary = "sk-canary-yaml-7f7f7f7f"
    path = tmp_path / "params.yaml"
    path.write_text(f"generate:\n  teacher:\n    base_url: http://u:{canary}@h/v1\n    model: [x\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    [line] = info.value.lines()
    assert line.startswith(f"{path}:5:1: ") and "started at line 4" in line
    assert canary not in line and canary not in str(info.value)
    path.write_bytes(b"sft:\n  epochs: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_params(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(path)


def test_cli_validate_and_recipe_print_one_line_per_problem(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tutorloop import cli
    from tutorloop.config import recipes as recipe_config

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    line_no = break_params(tmp_path, "unclosed-bracket")
    runner = CliRunner()
    result = runner.invoke(cli.app, ["validate", "--project", str(tmp_path)])
    assert result.exit_code == 2
    [line] = stderr_lines(result.stderr)
    assert line.startswith(f"tutorloop: {tmp_path / 'params.yaml'}:{line_no + 1}:")
    assert result.exception is None or isinstance(result.exception, SystemExit)

    # a broken recipe (and a --set value that is not YAML) are one line each too
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "broken.yaml").write_text("evaluate:\n  limit: {10\n")
    monkeypatch.setattr(recipe_config, "RECIPES", recipes)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    result = runner.invoke(cli.app, ["recipe", "broken", "--project", str(tmp_path), "--dry-run"])
    assert result.exit_code == 2
    [line] = stderr_lines(result.stderr)
    assert line.startswith(f"tutorloop: recipe broken: {recipes / 'broken.yaml'}:3:1:"), line
    (recipes / "ok.yaml").write_text(yaml.safe_dump({"evaluate": {"limit": 10}}))
    result = runner.invoke(cli.app, ["recipe", "ok", "--project", str(tmp_path), "--dry-run",
                                     "-S", "evaluate.limit=[1"])
    assert result.exit_code == 2
    [line] = stderr_lines(result.stderr)
    assert line.startswith("tutorloop: recipe ok: --set 'evaluate.limit=[1' -> not a YAML value"), line


def test_a_stop_drops_queued_teacher_calls_instead_of_waiting_for_them(monkeypatch):
    """generate's thread pool: `with ThreadPoolExecutor` would run all 100 queued seeds (~10 s)
    before SIGTERM got out; the stop must take about one call's time instead."""
    import threading

    from tutorloop.runtime import signals, tracking
    from tutorloop.teachers import generation as generate

    monkeypatch.setenv("TUTORLOOP_TRACKING", "off")
    started = []

    class SlowExpander:  # a teacher whose calls each take 0.2 s
        concurrency = 2

        def __call__(self, seed, agents):
            started.append(seed["seed_id"])
            time.sleep(0.2)
            return [], {}

    class Journal:
        def append(self, record):
            pass

    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    t0 = time.monotonic()
    with pytest.raises(signals.Terminated):
        with tracking.stage_run("generate", {}):
            timer.start()
            generate._expand_all(SlowExpander(), [(j, {"seed_id": str(j)}) for j in range(100)], False, Journal())
    assert time.monotonic() - t0 < 3
    time.sleep(0.5)  # the two calls in flight finish; nothing queued starts after the stop
    assert len(started) < 20


def test_run_main_bad_input_is_one_redacted_line_and_exit_2(capsys, monkeypatch):
    from tutorloop.config import ConfigError
    from tutorloop.data.jsonl import DataError
    from tutorloop.llm.client import TeacherError
    from tutorloop.runtime.entry import run_main

    def fails(err):
        def main():
            raise err
        return main

    cases = [
        (TeacherError("cannot reach the teacher at http://u:sk-canary-entry-123456@h/v1 (retried); is the server up?"),
         "tutorloop: cannot reach the teacher at http://***@h/v1 (retried); is the server up?"),
        (DataError("data/x.jsonl:3: missing field(s) ['answer']"), "tutorloop: data/x.jsonl:3: missing field(s) ['answer']"),
        (FileNotFoundError(2, "No such file or directory", "models/round-9"),
         "tutorloop: models/round-9: No such file or directory"),
        (ConfigError("evaluate.fewshot: 2 -> needs the SFT set\nfor its examples (--shots)"),
         "tutorloop: evaluate.fewshot: 2 -> needs the SFT set for its examples (--shots)"),
    ]
    for err, want in cases:
        with pytest.raises(SystemExit) as info:
            run_main(fails(err))
        assert info.value.code == 2
        assert capsys.readouterr().err.splitlines() == [want]
    with pytest.raises(ZeroDivisionError):  # a bug is not bad input: it propagates, traceback and all
        run_main(fails(ZeroDivisionError("bug")))
    monkeypatch.setenv("TUTORLOOP_TRACEBACK", "1")  # asked for: the traceback of bad input too
    with pytest.raises(DataError):
        run_main(fails(DataError("x.jsonl: no records")))


def test_ctrl_c_during_server_sampling_returns_at_once(monkeypatch):
    """practice/evaluate through a server: Ctrl-C must not wait for requests already sent (a hung
    server holds each for timeout x retries); the pool drops them and the stop gets out at once."""
    import threading

    from tutorloop.inference.sampler import ServerSampler
    from tutorloop.llm.client import Replies

    class HungServer:   # every request takes 5 s
        def replies(self, messages, sampling, sample=0, n=1):
            time.sleep(5)
            return Replies(["#### 1"] * n, 1), False

    sampler = object.__new__(ServerSampler)   # the sampler as built for a server, minus its checkpoint
    sampler.chat, sampler.n_per_request, sampler.concurrency = HungServer(), True, 2
    # Ctrl-C as a stage process has it (Python's default handler): in a full run an earlier test
    # in this process can leave another SIGINT handler behind, and the stop then never arrives.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        timer.start()
        try:
            sampler([[{"role": "user", "content": str(i)}] for i in range(20)], k=2, do_sample=True,
                    temperature=0.7, max_new_tokens=8)
        finally:
            signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - t0 < 2


def test_recipe_runs_dvc_through_the_interpreter_without_an_activated_venv(tmp_path):
    """`.venv/bin/tutorloop recipe` with no venv on PATH: DVC is run as `python -m dvc`, so the
    user sees DVC's own answer (here: not a DVC repository), never FileNotFoundError: 'dvc'."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    exe = Path(sys.executable).parent / "tutorloop"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PATH")}
    env["PATH"] = "/usr/bin:/bin"
    assert shutil.which("dvc", path=env["PATH"]) is None
    proc = subprocess.run([str(exe), "recipe", "gsm8k", "--project", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "FileNotFoundError" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode != 0 and "dvc" in (proc.stdout + proc.stderr).lower()
    assert "not inside of a DVC repository" in proc.stderr or "not a DVC repository" in proc.stderr.lower() \
        or "git" in proc.stderr.lower(), proc.stderr[-1000:]


def toy_dvc_project(path: Path) -> Path:
    """A git + DVC project of two stages whose outputs do not exist yet (a fresh clone: no dvc.lock)."""
    path.mkdir()
    (path / "params.yaml").write_text("a: 0\n")
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "one": {"cmd": "python -c \"open('one.txt', 'w').write('1')\"", "params": ["a"], "outs": ["one.txt"]},
        "two": {"cmd": "python -c \"open('two.txt', 'w').write(open('one.txt').read())\"", "deps": ["one.txt"],
                "outs": ["two.txt"]}}}, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([PY, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    subprocess.run([PY, "-m", "dvc", "config", "core.analytics", "false"], cwd=path, check=True)
    subprocess.run(git + ["add", "-A"], cwd=path, check=True)
    subprocess.run(git + ["commit", "-qm", "toy"], cwd=path, check=True)
    return path


def test_a_first_recipe_run_does_not_warn_once_per_output_it_is_about_to_make(tmp_path, monkeypatch, capfd):
    """`dvc exp run` checks the workspace out first, and with no dvc.lock yet dvc_data warns "No
    file hash info found for '<path>'. It won't be created." for every output (~28 on a fresh
    clone): the recipe runner's DVC drops exactly that record (flows/process.py); DVC's and the
    stages' own output still reach the user."""
    from flows.process import interpreter_env
    from tutorloop.cli import loop as cli

    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(var, "t")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "t@example.com")
    plain = toy_dvc_project(tmp_path / "plain")
    proc = subprocess.run([PY, "-m", "dvc", "exp", "run", "-n", "x", "-S", "a=1"], cwd=plain, capture_output=True,
                          text=True, env=interpreter_env())
    assert proc.returncode == 0 and proc.stderr.count("No file hash info found for") == 2, proc.stderr  # the bug

    project = toy_dvc_project(tmp_path / "project")
    monkeypatch.setattr(cli, "recipe_params", lambda name, project, sets=(), extra=None: ({"a": 1}, {"a": 0}))
    capfd.readouterr()
    assert cli._run_recipe("toy", project) == 0
    out, err = capfd.readouterr()
    assert "No file hash info" not in out + err, err
    assert "Running stage 'one'" in out and "Running stage 'two'" in out and "Ran experiment(s): toy" in out
    assert (project / "two.txt").read_text() == "1"


# --- stops a stage cannot act on at once, and runs whose process is gone --------------------

SPIN_C = """
#include <time.h>
void spin(double seconds) {   /* busy for `seconds` of wall time, never returning early */
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do { clock_gettime(CLOCK_MONOTONIC, &b); } while ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9 < seconds);
}
"""


@pytest.fixture(scope="module")
def spin_lib(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the long C call")
    folder = tmp_path_factory.mktemp("spin")
    (folder / "spin.c").write_text(SPIN_C)
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(folder / "spin.so"), str(folder / "spin.c")], check=True)
    return folder / "spin.so"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_inside_a_long_call_ends_the_stage_within_the_grace_period(store, params_dir, spin_lib, sig):
    """Issue 22 item 1: the Python handler cannot run while the main thread is inside one long C
    call (a bf16 backward on an AVX2 CPU: minutes). The watchdog ends the stage within the grace
    period (here 2 s), the run KILLED, exit 128 + signum."""
    uri, client = store
    env, experiment = stage_env(uri)
    env.update(SPIN_LIB=str(spin_lib), TUTORLOOP_STOP_GRACE_S="2")
    proc = start(["-m", "tests.fault_stage", "spin", str(params_dir / "out" / "x.json")], params_dir, env)
    run = running_run(client, experiment, proc, "fault@spin")
    wait_for_line(proc, "ready")
    time.sleep(0.5)                        # inside the C call now
    sent = time.monotonic()
    proc.send_signal(sig)
    code, _, err = finish(proc, timeout=60)
    took = time.monotonic() - sent
    assert code == 128 + sig, err
    assert 1.5 < took < 10, took           # the grace period, not the 120 s call
    final = client.get_run(run.info.run_id)
    assert final.info.status == "KILLED"
    assert final.data.tags["tutorloop.stopped_by"].startswith(signal.Signals(sig).name)
    assert "inside a long call" in err
    print(f"\n{signal.Signals(sig).name} to exit inside a 120 s C call: {took:.1f} s (grace 2 s)")


def test_a_run_whose_process_was_killed_is_ended_by_the_next_stage(store, params_dir):
    """Issue 22 item 2: SIGKILL (or the OOM killer) leaves the run RUNNING; the next stage start
    finds its process gone and ends it KILLED with the reason. A live stage's run is left alone."""
    uri, client = store
    env, experiment = stage_env(uri)
    victim = start(["-m", "tests.fault_stage", "sleep", str(params_dir / "out" / "a.json")], params_dir, env)
    alive = None
    try:
        run = running_run(client, experiment, victim, "fault@sleep")
        assert run.data.tags["tutorloop.pid"] == str(victim.pid)
        alive = start(["-m", "tests.fault_stage", "sleep", str(params_dir / "out" / "b.json")], params_dir, env)
        wait_for_line(alive, "ready")
        victim.kill()
        victim.wait(30)
        assert client.get_run(run.info.run_id).info.status == "RUNNING"     # nothing could end it
        later = subprocess.run([PY, "-m", "tests.fault_stage", "raise", str(params_dir / "out" / "c.json")],
                               cwd=params_dir, env=env, capture_output=True, text=True, timeout=120)
        assert later.returncode == 1
        final = client.get_run(run.info.run_id)
        assert final.info.status == "KILLED" and f"process {victim.pid}" in final.data.tags["tutorloop.stopped_by"]
        exp = client.get_experiment_by_name(experiment)
        still = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
        assert [r.data.tags["tutorloop.pid"] for r in still] == [str(alive.pid)]
    finally:
        for p in (victim, alive):
            if p is not None and p.poll() is None:
                p.kill()
            p.communicate()


FLOW_SCRIPT = """
import sys
from prefect import flow
from prefect.testing.utilities import prefect_test_harness
from flows.pipeline import dvc_stage

@flow
def one(project):
    return dvc_stage("slow", None, project)

with prefect_test_harness(server_startup_timeout=120):
    one(sys.argv[1])
"""


def test_stopping_a_prefect_flow_stops_its_dvc_stage(store, tmp_path):
    """Issue 22 item 3, through Prefect and DVC: SIGTERM to the flow's process (a worker stopping,
    a cancel in the UI) must stop the stage DVC runs, leave its run KILLED, and leave no process
    behind. (subprocess.run SIGKILLed `dvc` alone; the stage ran on after the lock was released.)"""
    import psutil

    uri, client = store
    env, experiment = stage_env(uri)
    project = tmp_path / "flowproj"
    project.mkdir()
    subprocess.run([PY, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True, env=env)
    (project / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: python -m tests.fault_stage sleep out/x.json\n"
                                      "    outs: [out/x.json]\n")
    (project / "flow.py").write_text(FLOW_SCRIPT)
    # a session of its own, so the test can clean up the harness's Prefect server afterwards (it
    # outlives a terminated flow); the stop itself goes to the flow's pid only, as a worker sends it
    log = project / "flow.log"
    with open(log, "w") as out_file:
        flow_proc = subprocess.Popen([PY, "flow.py", str(project)], cwd=project, env=env, stdout=out_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = running_run(client, experiment, flow_proc, "fault@sleep")
        stage_pid = int(run.data.tags["tutorloop.pid"])
        assert psutil.pid_exists(stage_pid)
        sent = time.monotonic()
        flow_proc.send_signal(signal.SIGTERM)
        flow_proc.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        if flow_proc.poll() is None:
            flow_proc.kill()
        try:
            os.killpg(flow_proc.pid, signal.SIGKILL)   # the harness's server, if left
        except ProcessLookupError:
            pass
    out = log.read_text()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(stage_pid) and psutil.Process(stage_pid).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    stage_gone = not psutil.pid_exists(stage_pid) or psutil.Process(stage_pid).status() == psutil.STATUS_ZOMBIE
    if not stage_gone:
        os.kill(stage_pid, signal.SIGKILL)
    assert stage_gone, f"the stage (pid {stage_pid}) outlived its flow:\n{out[-3000:]}"
    final = client.get_run(run.info.run_id)
    assert final.info.status == "KILLED" and final.data.tags["tutorloop.stopped_by"] == "SIGTERM"
    assert flow_proc.returncode != 0 and took < 60, (flow_proc.returncode, took)
    print(f"\nflow SIGTERM -> stage stopped and flow exited in {took:.1f} s")


def test_one_flow_run_or_recipe_per_workspace_and_the_lock_dies_with_its_holder(tmp_path):
    """A second `tutorloop run` (or recipe, or seeds) in a workspace another one holds exits 2 in
    one line naming the holder's pid, before any work; the lock is re-entered by the process that
    holds it (loop_flow -> round_flow) and freed when its holder dies, even by SIGKILL."""
    from typer.testing import CliRunner

    from flows.process import WorkspaceBusy, workspace_lock
    from tutorloop.cli import app

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    holder = subprocess.Popen([PY, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from flows.process import workspace_lock\n"
                               "with workspace_lock(sys.argv[2], 'a scheduled loop'):\n"
                               "    print('held', flush=True); time.sleep(120)", str(ROOT), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["run"], ["recipe", "quick"], ["seeds", "quick", "--seeds", "1"]):
            result = CliRunner().invoke(app, [*args, "--project", str(tmp_path)])
            [line] = stderr_lines(result.stderr)
            assert result.exit_code == 2 and f"pid {holder.pid} (a scheduled loop)" in line, (args, result.output)
        with pytest.raises(WorkspaceBusy):
            with workspace_lock(tmp_path, "me"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with workspace_lock(tmp_path, "me"), workspace_lock(tmp_path, "me again"):   # free again; re-entrant
        assert "me" in (tmp_path / ".tutorloop.run.lock").read_text()
