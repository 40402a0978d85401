"""End to end: the real DVC pipeline, run by the Prefect loop flow, tracked in MLflow.

A fresh project folder (code + dvc.yaml + a tiny params.yaml, as a clone would have), the tiny
random student, two rounds. Asserts that every stage ran, MLflow holds one parent run per round
with the stage runs nested under it, the registry has versions with aliases and lineage, a
second run is a no-op, and a round-2-only change makes only round 2 stale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import copy_project, tiny_params
from support import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def stale(project) -> dict:
    """`dvc status` without the `inputs` snapshot, which is `always_changed` by design (it re-hashes
    the files from outside the project on every repro)."""
    status = json.loads(dvc(project, "status", "--json").stdout or "{}")
    assert status.pop("inputs", ["always changed"]) == ["always changed"]
    return status


def ran_stages(out: str) -> set[str]:
    """Stages `dvc repro` ran, without the `inputs` snapshot that runs on every repro."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")} - {"inputs"}


def dvc(project, *args) -> subprocess.CompletedProcess:
    """`dvc` as a user runs it with the virtualenv active (stages call `python -m components...`)."""
    from flows.pipeline import _stage_env

    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                          check=True, env=_stage_env(None))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    root = copy_project(tmp_path_factory.mktemp("project"))
    raw = tiny_params(tiny_model_dir, rounds=2)
    raw["controls"] = {"1": "0"}          # round 1's control runs, is scored and registered in round 1's flow
    raw["checkpoints"]["control-1"] = "models/control-1"
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    return root


@pytest.fixture(scope="module")
def first_run(project, prefect_harness):
    from flows.pipeline import loop_flow

    os.environ.pop("TUTORLOOP_TRACKING", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return loop_flow(str(project))


def test_every_stage_ran(first_run):
    ran = [r["stage"] for r in first_run if r["ran"]]
    expected = ["base_model", "inputs", "generate", "decontaminate", "evaluate@base", "register@base", "sft",
                "evaluate@0", "register@0"]
    for r in ("1", "2"):
        expected += [f"practice@{r}", f"feedback@{r}", f"followup@{r}", f"preference@{r}", f"evaluate@{r}", f"register@{r}"]
        expected += ["control@1", "evaluate@control-1", "register@control-1"] if r == "1" else []
    assert ran == expected + ["report"]


def test_outputs_exist_and_load(project, first_run):
    from transformers import AutoModelForCausalLM

    for key in ("base", "0", "1", "2", "control-1"):
        m = json.loads((project / f"metrics/{key}.json").read_text())
        assert m["n"] == 8
    AutoModelForCausalLM.from_pretrained(str(project / "models/round-2"))
    AutoModelForCausalLM.from_pretrained(str(project / "models/control-1"))
    # a header and a row per checkpoint: base, SFT, two rounds and round 1's control
    assert (project / "reports/accuracy.csv").read_text().count("\n") == 6
    assert (project / "reports/accuracy.png").stat().st_size > 0


def test_mlflow_nests_stage_runs_under_round_parents(project, first_run):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tutorloop")
    assert exp.artifact_location.startswith((project / "mlartifacts").as_uri())
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = {r.data.tags["tutorloop.round"]: r for r in runs if r.data.tags.get("tutorloop.kind") == "round"}
    assert set(parents) == {"0", "1", "2"}
    children = {}
    for r in runs:
        parent = r.data.tags.get("mlflow.parentRunId")
        if parent:
            children.setdefault(parent, set()).add(r.data.tags["tutorloop.stage"])
    assert children[parents["0"].info.run_id] == {"base_model", "generate", "decontaminate", "evaluate", "register",
                                                      "sft"}
    for key in ("1", "2"):
        assert children[parents[key].info.run_id] == {"practice", "feedback", "followup", "preference", "evaluate",
                                                      "register"} | ({"control"} if key == "1" else set())
    sft_run = next(r for r in runs if r.data.tags.get("tutorloop.stage") == "sft")
    assert "train/loss" in sft_run.data.metrics and "sft.learning_rate" in sft_run.data.params
    practice_run = next(r for r in runs if r.data.tags.get("tutorloop.stage") == "practice")
    assert practice_run.data.metrics["tokens_per_second"] > 0


def test_registry_has_versions_aliases_and_lineage(project, first_run):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    versions = client.search_model_versions("name='tutor'")
    assert {v.tags["round"] for v in versions} == {"base", "0", "1", "2", "control-1"}
    control = client.get_model_version_by_alias("tutor", "control-1")   # registered, never a candidate
    assert control.tags["round"] == "control-1" and control.tags["lineage.parent"] == "0"
    champion = client.get_model_version_by_alias("tutor", "champion")
    assert champion.tags["promotion"] == "champion"
    v2 = next(v for v in versions if v.tags["round"] == "2")
    assert v2.tags["lineage.parent"] == "1"
    assert v2.tags["lineage.dvc.out.models/round-2"]
    assert v2.tags["lineage.dvc.dep.data/round-2/pairs.jsonl"]
    assert v2.tags["lineage.dvc.dep.models/round-1"]
    aliases = client.get_registered_model("tutor").aliases
    assert aliases["champion"] == champion.version
    promotions = {v.tags["promotion"] for v in versions if v.tags["round"] != "control-1"}
    assert ("challenger" in aliases) == ("challenger" in promotions)


def test_second_run_is_a_noop_and_logs_nothing(project, first_run):
    from mlflow import MlflowClient

    from flows.pipeline import loop_flow

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tutorloop")
    before = len(client.search_runs([exp.experiment_id], max_results=500))
    again = loop_flow(str(project))
    assert not any(r["ran"] for r in again)
    assert len(client.search_runs([exp.experiment_id], max_results=500)) == before


def test_round_two_change_reruns_only_round_two(project, first_run):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["rounds"]["2"]["preference"]["beta"] = 0.2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(stale(project)) == {"preference@2"}
    out = dvc(project, "repro").stdout
    assert ran_stages(out) == {"preference@2", "evaluate@2", "register@2", "report"}
    assert stale(project) == {}


def test_teacher_change_runs_generate_and_never_restores_stale_data(project, first_run):
    """A changed teacher knob or prompt file makes DVC *run* generate (not restore it from the
    run-cache); restoring is only for a config DVC has seen, whose outputs are identical."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    before = (project / "data/generated/sft.jsonl").read_text()
    params["generate"]["agents"]["ama"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(project, "repro", "-s", "generate").stdout
    assert "Running stage 'generate'" in out and "run-cache" not in out
    assert (project / "data/generated/sft.jsonl").read_text() != before
    prompt = project / "tutorloop/teachers/prompts/solver.md"
    prompt.write_text(prompt.read_text() + "\nShow units.\n")
    assert "generate" in stale(project)
    out = dvc(project, "repro", "-s", "generate").stdout
    assert "Running stage 'generate'" in out
    prompt.write_text(prompt.read_text().replace("\nShow units.\n", ""))
    params["generate"]["agents"]["ama"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(project, "repro", "-s", "generate")
    assert (project / "data/generated/sft.jsonl").read_text() == before
    assert stale(project) == {}


def test_an_edited_gsm8k_file_rescores_and_an_unchanged_one_costs_nothing(project, first_run):
    """The GSM8K file lives outside the project (it may be absent), so the `inputs` stage copies it
    in and the consumers depend on the copy: a changed file content — params untouched — re-runs
    decontaminate and every evaluation; an unchanged one re-runs nothing but the snapshot."""
    rows = [{"question": f"Tom has {n} apples and buys {n + 3} more. How many apples does he have now?",
             "answer": f"{n} + {n + 3} = <<{n}+{n + 3}={2 * n + 3}>>{2 * n + 3}\n#### {2 * n + 3}"} for n in range(4)]
    gsm = project / "gsm8k-mine.jsonl"
    gsm.write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = yaml.safe_load((project / "params.yaml").read_text())
    original = params["evaluate"]["gsm8k"]["path"]
    params["evaluate"]["gsm8k"]["path"] = str(gsm)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(project, "repro")
    assert ran_stages(dvc(project, "repro").stdout) == set()           # unchanged: nothing
    manifest = json.loads((project / "data/inputs/manifest.json").read_text())
    assert manifest["gsm8k"]["rows"] == 4 and manifest["gsm8k"]["source"] == str(gsm)
    rows[0]["question"] = rows[0]["question"].replace("Tom", "Ann")
    gsm.write_text("".join(json.dumps(r) + "\n" for r in rows))        # same params, new content
    ran = ran_stages(dvc(project, "repro").stdout)
    assert {"decontaminate", "evaluate@base", "evaluate@0", "evaluate@1", "evaluate@2"} <= ran
    assert "sft" not in ran and "generate" not in ran                 # decontaminate's outputs are unchanged
    params["evaluate"]["gsm8k"]["path"] = original
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(project, "repro")
    assert stale(project) == {}


def test_exp_run_switches_round_two_to_kto_visible_in_exp_show_and_mlflow(project, first_run):
    """`dvc exp run -S rounds.2.preference.method=kto` reruns only round 2's training and what follows;
    `dvc exp show` lists both, `tutorloop compare` plots them, MLflow tags the KTO run."""
    from mlflow import MlflowClient

    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline"],
                   cwd=project, check=True)
    tracked = subprocess.run(["git", "ls-files", "mlflow.db", "mlartifacts", "models", "data"], cwd=project,
                             capture_output=True, text=True).stdout.split()
    heavy = [f for f in tracked if f.startswith(("mlflow.db", "mlartifacts/")) or f.endswith((".safetensors", ".jsonl"))]
    assert tracked and not heavy, f"weights, data and tracking state stay out of git (DVC's job): {heavy}"
    # metrics are git-ignored in this project, so the baseline is recorded as an experiment too
    assert ran_stages(dvc(project, "exp", "run", "-n", "dpo-r2").stdout) == set()
    out = dvc(project, "exp", "run", "-n", "kto-r2", "-S", "rounds.2.preference.method=kto").stdout
    assert ran_stages(out) == {"preference@2", "evaluate@2", "register@2", "report"}
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    from tutorloop.eval.report import experiments

    exps = experiments(shown)
    assert {e["method"] for e in exps} >= {"1:dpo/2:dpo", "1:dpo/2:kto"}
    assert {"kto-r2", "dpo-r2"} <= {e["name"] for e in exps}
    # each round's cost (practice + training minutes) is read from the stages' own metrics
    assert all(e["minutes"].keys() == {"1", "2"} and min(e["minutes"].values()) > 0
               for e in exps if e["name"] in ("kto-r2", "dpo-r2"))
    cli = subprocess.run([sys.executable, "-m", "tutorloop.cli", "compare", "--project", str(project)],
                         capture_output=True, text=True, cwd=project)
    assert cli.returncode == 0, cli.stderr
    assert (project / "reports/compare.png").stat().st_size > 0 and "kto-r2" in cli.stdout
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tutorloop")
    kto_runs = client.search_runs([exp.experiment_id], "tags.method = 'kto'")
    assert kto_runs and kto_runs[0].data.metrics["method_kto"] == 1.0
    # the experiment's stages nest under it and their round, as `tutorloop run` nests a round's
    round_run = client.get_run(kto_runs[0].data.tags["mlflow.parentRunId"])
    assert round_run.info.run_name == "kto-r2 round-2"
    assert client.get_run(round_run.data.tags["mlflow.parentRunId"]).info.run_name == "kto-r2"
    assert json.loads((project / "data/round-2/preference_metrics.json").read_text())["method_kto"] == 1.0
    # a later commit: its HEAD has no experiments of its own; --all-commits finds those of the earlier one
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m",
                    "later"], cwd=project, check=True)
    for flags, listed in (([], False), (["--all-commits"], True)):
        cli = subprocess.run([sys.executable, "-m", "tutorloop.cli", "compare", "--project", str(project), *flags],
                             capture_output=True, text=True, cwd=project)
        assert cli.returncode == 0, cli.stderr
        assert ("kto-r2" in cli.stdout) is listed, cli.stdout


def test_pushed_outputs_let_a_second_workspace_pull_and_run_nothing(project, first_run, tmp_path_factory):
    """`tutorloop run --push` (loop_flow(push=True)) pushes each stage's outputs to the DVC remote;
    a clone elsewhere (another machine: a second workspace here) pulls them and `dvc repro` runs
    nothing. A local remote stands in for the team stack's S3 (MinIO) one."""
    from flows.pipeline import loop_flow

    remote = tmp_path_factory.mktemp("remote")
    dvc(project, "remote", "add", "-f", "-d", "shared", str(remote))
    results = loop_flow(str(project), push=True)
    assert not [r["stage"] for r in results if r["ran"] and r["stage"] != "inputs"]   # up to date: only pushed
    assert any(remote.rglob("*")), "nothing reached the remote"
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "pushed"], cwd=project, check=True)
    second = tmp_path_factory.mktemp("second") / "ws"
    subprocess.run(["git", "clone", "-q", str(project), str(second)], check=True)
    assert not (second / "models" / "round-2").exists()
    dvc(second, "pull", "-q")
    assert (second / "models" / "round-2" / "model.safetensors").exists()
    assert stale(second) == {}                                  # every output restored, nothing to run
    assert ran_stages(dvc(second, "repro").stdout) == set()


def test_an_s3_compatible_remote_carries_the_outputs_between_workspaces(project, first_run, tmp_path_factory,
                                                                        monkeypatch):
    """The same through an S3-compatible server, as infra/README.md's MinIO remote: moto's S3
    server on loopback (MinIO itself needs Docker here), DVC's s3 remote with an endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    from flows.pipeline import loop_flow

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for var, value in (("AWS_ACCESS_KEY_ID", "tutorloop"), ("AWS_SECRET_ACCESS_KEY", "not-a-secret"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(var, value)      # from the environment, as a real key would be
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="dvc")
        dvc(project, "remote", "add", "-f", "-d", "team", "s3://dvc/tutorloop")
        dvc(project, "remote", "modify", "--local", "team", "endpointurl", endpoint)   # per machine, untracked
        results = loop_flow(str(project), push=True)
        assert not [r["stage"] for r in results if r["ran"] and r["stage"] != "inputs"]
        listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="dvc", Prefix="tutorloop/")
        assert listed.get("KeyCount", 0) > 0, "nothing reached the bucket"
        git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
        subprocess.run(["git", "add", "-A"], cwd=project, check=True)
        subprocess.run([*git, "commit", "-qm", "the team remote"], cwd=project, check=True)
        second = tmp_path_factory.mktemp("third") / "ws"
        subprocess.run(["git", "clone", "-q", str(project), str(second)], check=True)
        dvc(second, "remote", "modify", "--local", "team", "endpointurl", endpoint)
        pulled = dvc(second, "pull", "-q")
        assert pulled.returncode == 0, pulled.stderr
        assert (second / "models" / "round-2" / "model.safetensors").exists()
        assert stale(second) == {}
        assert ran_stages(dvc(second, "repro").stdout) == set()
    finally:
        server.stop()
