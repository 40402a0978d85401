"""The MLflow UI a user lands in (`tutorloop ui`): the runs of the loop, not MLflow's GenAI
overview; a DVC experiment's stages nested under the experiment and its rounds; the registered
model with its champion's evidence.

The nesting is checked on the store directly; the pages in a real browser: Debian's chromium,
driven by Playwright (skipped where either is missing; .ci/run installs chromium).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT, free_port

from tutorloop.runtime import tracking

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STAGES = [("generate", None), ("sft", "0"), ("evaluate", "0"), ("practice", "1"), ("preference", "1"),
          ("control", "1"), ("evaluate", "control-1"), ("evaluate", "1"), ("practice", "2")]


@pytest.fixture
def recipe_store(tmp_path, monkeypatch):
    """A project whose MLflow store holds the stage runs of `dvc exp run -n quick` (DVC names the
    experiment in the stages' environment) and a registered champion with its evidence."""
    from mlflow import MlflowClient

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUTORLOOP_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    monkeypatch.setenv(tracking.DVC_EXP_ENV, "quick")
    monkeypatch.setenv(tracking.DVC_BASELINE_ENV, "0123456789abcdef")
    exp_id = tracking.ensure_store(tmp_path)
    for stage, key in STAGES:
        with tracking.stage_run(stage, {"seed": 1}, round_key=key) as log:
            log.metrics({"accuracy": 0.4})
    client = MlflowClient()
    [run] = client.search_runs([exp_id], filter_string="attributes.run_name = 'evaluate@1'")
    client.create_registered_model("tutor")
    version = client.create_model_version("tutor", source=str(tmp_path / "models/round-1"), run_id=run.info.run_id,
                                          description="## Evidence\n\nheld-out 41.0%, vs SFT +23/-10")
    client.set_registered_model_alias("tutor", "champion", version.version)
    return tmp_path, exp_id, client


def test_a_dvc_experiments_stages_nest_under_the_experiment_and_their_round(recipe_store):
    _, exp_id, client = recipe_store
    runs = {r.info.run_name: r for r in client.search_runs([exp_id])}
    parent = {name: runs[name].data.tags.get("mlflow.parentRunId") for name in runs}
    by_id = {r.info.run_id: name for name, r in runs.items()}
    assert parent["quick"] is None and runs["quick"].data.tags["tutorloop.kind"] == "experiment"
    assert {by_id[parent[f"quick round-{k}"]] for k in "012"} == {"quick"}
    for name, rnd in (("generate", "0"), ("sft@0", "0"), ("practice@1", "1"), ("control@1", "1"),
                      ("evaluate@control-1", "1"), ("practice@2", "2")):
        assert by_id[parent[name]] == f"quick round-{rnd}", name
    assert len(runs) == len(STAGES) + 4                   # one experiment and three rounds, each made once
    first = min(r.info.start_time for n, r in runs.items() if n.startswith("generate"))
    assert runs["quick"].info.end_time >= runs["practice@2"].info.end_time > first   # spans its stages


def test_outside_an_experiment_a_stage_run_stands_alone(tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.DVC_EXP_ENV, raising=False)
    assert tracking.experiment_parent("0", "1") == []
    urls = tracking.ui_urls("http://127.0.0.1:5000/", "7")
    assert urls["runs"] == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"


def test_ui_without_a_store_says_what_to_run_and_creates_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tutorloop.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    result = CliRunner().invoke(app, ["ui", "--project", str(tmp_path), "--no-browser"])
    assert result.exit_code == 2 and "no MLflow store" in result.output and "make demo" in result.output
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_the_pages_a_user_opens_first_in_a_real_browser(recipe_store):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    project, exp_id, _ = recipe_store
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    server = subprocess.Popen([sys.executable, "-m", "tutorloop.cli", "ui", "--no-browser", "--port", str(port)],
                              cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        urls = _printed_urls(server)
        assert urls["runs"].endswith(f"#/experiments/{exp_id}/runs?workflowType=machine_learning")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            _check_runs_page(page, urls["runs"])
            _check_model_page(page, urls["model"])
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)


def _printed_urls(server, timeout: float = 90) -> dict[str, str]:
    urls, deadline = {}, time.monotonic() + timeout
    while len(urls) < 2 and time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            pytest.fail(f"tutorloop ui exited ({server.poll()}) before printing its pages")
        found = re.search(r"(http://\S+)", line)
        if found:
            urls["runs" if line.startswith("runs") else "model"] = found.group(1)
    return urls


def _expand(page, name: str) -> None:
    """Click the expander beside run `name` in the runs table (children start collapsed)."""
    cell = page.locator("[role=gridcell][col-id]", has=page.get_by_text(name, exact=True)).first
    cell.locator("button").first.click()


def _check_runs_page(page, url: str) -> None:
    page.goto(url)
    page.get_by_text("Run Name", exact=True).wait_for(timeout=60000)   # the runs table, not GenAI Overview
    page.get_by_text("quick", exact=True).wait_for(timeout=30000)
    names = lambda: [" ".join(t.split()[1:]) for t in   # noqa: E731 - "#5f7281 quick": colour, then name
                     page.locator("[role=gridcell][col-id='attributes.`Run Name`']").all_inner_texts()]
    assert names() == ["quick"], names()                  # the experiment alone at the top level
    _expand(page, "quick")
    page.get_by_text("quick round-1", exact=True).wait_for(timeout=10000)
    assert sorted(names()) == ["quick", "quick round-0", "quick round-1", "quick round-2"], names()
    _expand(page, "quick round-1")
    page.get_by_text("practice@1", exact=True).wait_for(timeout=10000)
    assert {"practice@1", "preference@1", "control@1", "evaluate@control-1", "evaluate@1"} <= set(names())
    assert "sft@0" not in names()                          # round 0's stages stay folded in their round


def _check_model_page(page, url: str) -> None:
    page.goto(url)
    page.get_by_text("Version 1", exact=True).first.wait_for(timeout=60000)
    assert page.get_by_text("champion").count() >= 1               # the alias beside its version
    page.get_by_text("Version 1", exact=True).first.click()
    page.get_by_text("Source Run").first.wait_for(timeout=30000)
    assert page.get_by_text("Evidence").count() >= 1               # the version's description: its card
    assert page.get_by_text("evaluate@1").count() >= 1             # the run that produced it, linked
