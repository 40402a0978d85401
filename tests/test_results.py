"""Results tables that cannot drift (tutorloop/eval/results.py): a run's report saved under
docs/results/ with where it comes from, pasted into a page's `results:` block, and a hand edit
or a re-saved file without re-pasting found stale."""

from __future__ import annotations

import json

from support import write_eval
from typer.testing import CliRunner

from tutorloop.cli import app
from tutorloop.eval import results
from tutorloop.eval.report import write_report

PROVENANCE = {"commit": "abc1234", "cpu": "AMD EPYC (family 25 model 17; avx512_bf16; AVX512)",
              "precision": "bfloat16", "date": "2026-12-07", "command": "tutorloop recipe quick"}


def workspace(tmp_path):
    """A project whose report stage ran: base 2/10, SFT 6/10, round 1 8/10 (wins 2 over SFT)."""
    for key, pattern in (("base", "1100000000"), ("0", "1111110000"), ("1", "1111111100")):
        write_eval(tmp_path, key, pattern)
    write_report(tmp_path / "metrics", tmp_path / "reports", tmp_path / "eval")
    return tmp_path


def test_saved_report_is_pasted_as_a_table_with_its_provenance(tmp_path):
    project = workspace(tmp_path)
    saved = results.save(project, "demo-x", PROVENANCE, minutes={"0": 5.83, "1": 2.5})
    assert [p.name for p in saved] == ["demo-x.csv", "demo-x.json"]
    page = project / "README.md"
    page.write_text("intro\n<!-- results: demo-x -->\nold typed numbers: 99.9%\n<!-- /results -->\nafter\n")
    assert results.stale(project) == ["README.md: a results block differs from docs/results/"]
    assert results.paste(project) == [page]
    text = page.read_text()
    assert "99.9%" not in text and text.startswith("intro\n<!-- results: demo-x -->\n") and text.endswith("after\n")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "20.0% [" in rows["base"] and "60.0% [" in rows["round 0 (SFT)"] and "80.0% [" in rows["round 1"]
    assert "+2/−0" in rows["round 1"] and "| 5.8 |" in rows["round 0 (SFT)"]   # paired vs SFT; minutes kept
    assert "AMD EPYC (family 25 model 17" in text and "`abc1234`" in text and "tutorloop recipe quick" in text
    assert results.stale(project) == [] and results.paste(project) == []      # idempotent


def test_a_hand_edited_figure_or_a_resaved_file_is_stale(tmp_path):
    project = workspace(tmp_path)
    results.save(project, "demo-x", PROVENANCE)
    page = project / "docs" / "experiments.md"
    page.parent.mkdir(exist_ok=True)
    page.write_text("<!-- results: demo-x -->\n<!-- /results -->\n")
    results.paste(project)
    page.write_text(page.read_text().replace("80.0%", "81.0%"))               # a typed "improvement"
    assert results.stale(project) == ["docs/experiments.md: a results block differs from docs/results/"]
    results.paste(project)
    write_eval(project, "1", "1111111110")                                    # the run again, re-saved
    write_report(project / "metrics", project / "reports", project / "eval")
    results.save(project, "demo-x", PROVENANCE)
    assert results.stale(project), "a re-saved result must make the pasted block stale"
    page.write_text("<!-- results: nowhere -->\n<!-- /results -->\n")
    assert "no saved results named 'nowhere'" in results.stale(project)[0]


def test_pooled_seeds_render_as_their_own_table(tmp_path):
    pooled = tmp_path / "pooled.json"
    pooled.write_text(json.dumps([{"arm": "1", "baseline": "control-1", "arm_accuracy": 0.415,
                                   "baseline_accuracy": 0.398, "ahead": 61, "behind": 35, "n": 2100, "p": 0.0052}]))
    results.save(tmp_path, "seeds-x", PROVENANCE, source=pooled)
    (tmp_path / "README.md").write_text("<!-- results: seeds-x -->\n<!-- /results -->\n")
    results.paste(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| round 1 | control 1 | 41.5% | 39.8% | +61/−35 of 2100 | 0.0052 |" in text
    assert "seeds-x.pooled.json" in text


def test_report_command_saves_prints_markdown_and_docs_checks(tmp_path):
    project = workspace(tmp_path)
    runner = CliRunner()
    out = runner.invoke(app, ["report", "--project", str(project), "--markdown"])
    assert out.exit_code == 0 and out.output.startswith("| checkpoint | held-out, n = 10"), out.output
    out = runner.invoke(app, ["report", "--project", str(project), "--save", "mine", "--command", "tutorloop run"])
    assert out.exit_code == 0 and (project / "docs/results/mine.csv").exists(), out.output
    meta = json.loads((project / "docs/results/mine.json").read_text())
    assert meta["command"] == "tutorloop run" and meta["cpu"] and meta["precision"] in ("float32", "bfloat16")
    (project / "README.md").write_text("<!-- results: mine -->\n<!-- /results -->\n")
    assert runner.invoke(app, ["docs", "--project", str(project)]).exit_code == 1
    assert runner.invoke(app, ["docs", "--project", str(project), "--write"]).exit_code == 0
    assert runner.invoke(app, ["docs", "--project", str(project)]).exit_code == 0


def test_a_load_benchmarks_figures_render_as_one_row(tmp_path):
    figures = {"clients": 200, "seconds": 185.3, "requests": 671, "hung": 0, "p50_s": 48.3, "p99_s": 69.35,
               "tokens_per_second": 191.18, "peak_rss_gb": 2.2976, "kv_budget_gb": 4.0, "longest_sampled_wait_s": 69.35,
               "statuses": {"200": 591, "400": 23, "413": 11, "disconnected": 46}}
    source = tmp_path / "load.json"
    source.write_text(json.dumps(figures))
    assert [p.name for p in results.save(tmp_path, "load-x", PROVENANCE, source=source)] == ["load-x.load.json",
                                                                                          "load-x.json"]
    (tmp_path / "README.md").write_text("<!-- results: load-x -->\n<!-- /results -->\n")
    results.paste(tmp_path)
    row = [ln for ln in (tmp_path / "README.md").read_text().splitlines() if ln.startswith("| 200")][0]
    assert "591 x 200, 23 x 400, 11 x 413, 46 x disconnected" in row and "| 0 |" in row and "191.2" in row
