"""More held-out problems (`tutorloop heldout`) and paired comparisons of scored sets (`tutorloop paired`).

The drawn problems must be new to the workspace — no copy and no n-gram overlap with any SFT,
practice or held-out problem — or a "bigger held-out set" would score memorised problems.
"""

import json
import shutil
from fnmatch import fnmatch

import pytest
import yaml
from support import ROOT
from typer.testing import CliRunner

from tutorloop.cli import app
from tutorloop.data.jsonl import read_jsonl, write_jsonl
from tutorloop.errors import DataError
from tutorloop.eval.stats import mcnemar_p, wilson
from tutorloop.teachers import generation, heldout
from tutorloop.teachers.heldout import disjoint, draw

pytestmark = pytest.mark.usefixtures("no_tracking")

SEEN = [{"question": "Ann has 3 apples and buys 4 more apples at the market on a sunny Tuesday morning. "
                     "How many apples does Ann have now?"}]


def test_disjoint_drops_shared_seeds_copies_near_copies_and_overlaps_and_keeps_new_problems():
    copy = {"question": "  Ann has 3 apples and buys 4 more apples at the market on a sunny Tuesday\nmorning. "
                        "How many apples does Ann have now?"}
    near = {"question": SEEN[0]["question"].replace("buys 4", "buys 5")}   # one number: 13-grams differ
    embedded = {"question": "Before lunch: " + SEEN[0]["question"] + " Then she eats one. How many are left?"}
    same_seed = {"question": "A shop sells 7 pens a day for 9 days. How many pens does it sell?",
                 "provenance": {"seed_id": "gsm8k:12"}}
    new = {"question": "A train travels 60 km in one hour and then 45 km in the next hour. How far did it go?",
           "provenance": {"seed_id": "gsm8k:13"}}
    seen = SEEN + [{"question": "Unrelated text about a cat.", "provenance": {"seed_id": "gsm8k:12"}}]
    assert disjoint([copy, near, embedded, same_seed, new], seen, ngram=13, min_overlap=0.5, near_dup=0.5) == [new]


def workspace(params, tmp_path):
    """A project folder as generate + decontaminate leave it (the files `draw` checks against)."""
    gen = tmp_path / "data" / "generated"
    generation.generate_dataset(params.generate, gen, cache_dir=tmp_path / "cache", progress=False)
    (tmp_path / "data" / "clean").mkdir(parents=True)
    for split in ("sft", "practice"):
        (tmp_path / "data" / "clean" / f"{split}.jsonl").write_text((gen / f"{split}.jsonl").read_text())
    return tmp_path


def test_draw_writes_problems_new_to_the_workspace(params_factory, tmp_path):
    params = params_factory()
    params = params.model_copy(update={"generate": params.generate.model_copy(update={"cache_dir": "cache"})})
    project = workspace(params, tmp_path / "ws")
    # plant two problems of the same draw in the workspace: one in SFT, one in a follow-up practice set
    draw(params, project, 20, 777, project / "first.jsonl")
    first = read_jsonl(project / "first.jsonl")
    sft = read_jsonl(project / "data/clean/sft.jsonl") + [first[0]]
    write_jsonl(project / "data/clean/sft.jsonl", sft)
    (project / "data/practice-sets").mkdir(parents=True)
    write_jsonl(project / "data/practice-sets/after-1.jsonl", [first[1]])
    out = project / "extra" / "heldout.jsonl"
    counts = draw(params, project, n=20, seed=777, out=out)
    rows = read_jsonl(out)
    assert counts["written"] == len(rows) == 20 and counts["disjoint"] == counts["candidates"] - 2
    assert [r["id"] for r in rows] == [f"extra-777-{i}" for i in range(20)]
    planted = {first[0]["question"], first[1]["question"]}
    assert not planted & {r["question"] for r in rows}
    assert [r["question"] for r in rows[:18]] == [r["question"] for r in first[2:]]   # the rest, in order
    # a fresh workspace (no teacher journal in its cache) draws the same problems: re-runnable by command
    shutil.rmtree(project / "cache")
    draw(params, project, n=20, seed=777, out=project / "again.jsonl")
    assert read_jsonl(project / "again.jsonl") == rows


def test_draw_refuses_bad_requests(params_factory, tmp_path):
    params = params_factory()
    with pytest.raises(DataError, match="data/clean/sft.jsonl"):
        draw(params, tmp_path, n=5, seed=777, out=tmp_path / "x.jsonl")
    with pytest.raises(DataError, match="generate.seed"):
        draw(params, tmp_path, n=5, seed=params.generate.seed, out=tmp_path / "x.jsonl")
    with pytest.raises(DataError, match="at least one"):
        draw(params, tmp_path, n=0, seed=777, out=tmp_path / "x.jsonl")


def test_paired_prints_pass_at_1_and_mcnemar_against_the_first_and_previous(tmp_path, monkeypatch):
    ids = [f"p{i}" for i in range(10)]
    a = [True, True, True, False, False, False, False, False, False, False]     # 3/10
    b = [True, True, False, True, True, True, False, False, False, False]       # 5/10: +3/-1 vs a
    c = [True, True, False, True, True, True, True, True, False, False]         # 7/10: +2/-0 vs b, +5/-1 vs a
    for name, marks in (("a", a), ("b", b), ("c", c)):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "predictions.jsonl", [{"id": i, "correct": m} for i, m in zip(ids, marks)])
    # c as two parts (the held-out set + problems drawn after it), joined into one set by a comma
    (tmp_path / "c" / "predictions.jsonl").unlink()
    for part, sl in (("c", slice(0, 4)), ("c-extra", slice(4, 10))):
        (tmp_path / part).mkdir(exist_ok=True)
        write_jsonl(tmp_path / part / "predictions.jsonl", [{"id": i, "correct": m} for i, m in zip(ids[sl], c[sl])])
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["paired", "a", "b/predictions.jsonl", "c,c-extra"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    cells = {c[0].split("/")[0].split(",")[0]: c for c in ([x.strip() for x in line.split("│")[1:-1]]
                                              for line in result.output.splitlines() if line.startswith("│"))}
    for name, right in (("a", 3), ("b", 5), ("c", 7)):
        lo, hi = wilson(right, 10)
        assert cells[name][1:3] == [f"{right / 10:.1%} [{lo:.1%}, {hi:.1%}]", "10"]
    assert cells["a"][3:] == ["-", "-"]
    assert cells["b"][3:] == [f"+3/-1 of 10 p={mcnemar_p(1, 3):.2g}"] * 2
    assert cells["c"][3:] == [f"+5/-1 of 10 p={mcnemar_p(1, 5):.2g}", f"+2/-0 of 10 p={mcnemar_p(0, 2):.2g}"]


def test_paired_refuses_joined_parts_that_share_a_problem(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": "p0", "correct": True}, {"id": "p1", "correct": False}])
    write_jsonl(tmp_path / "b.jsonl", [{"id": "p1", "correct": True}])
    result = CliRunner().invoke(app, ["paired", f"{tmp_path}/a.jsonl,{tmp_path}/b.jsonl"])
    assert result.exit_code == 2
    assert "'p1'" in result.output and "different problems" in result.output


def test_paired_reports_a_missing_file_as_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["paired", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
    assert "no such file" in result.output


def test_paired_reports_an_empty_predictions_file_as_bad_input(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = CliRunner().invoke(app, ["paired", str(tmp_path / "empty.jsonl")])
    assert result.exit_code == 2


def test_draw_from_row_seeds_takes_only_rows_the_workspace_never_used(tmp_path):
    """jsonl/dataset seeds at another seed are the same pool reshuffled: a drawn problem must be a
    row that no split of the workspace used (GSM8K recipe: the dataset teacher passes rows through)."""
    import yaml

    from tests.conftest import ROOT
    from tutorloop.config import validate

    rows = [{"question": f"{name} packs {i + 3} crates of {fruit} with {2 * i + 5} in each crate. "
                         f"How many {fruit} does {name} pack?", "answer": f"#### {(i + 3) * (2 * i + 5)}"}
            for i, (name, fruit) in enumerate((n, f) for n in ("Ann", "Bo", "Cy", "Di", "Ed", "Flo")
                                              for f in ("pears", "plums", "limes", "figs", "kiwis"))]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["generate"]["teacher"]["kind"] = "dataset"
    raw["generate"]["seeds"].update(source="jsonl", path=str(tmp_path / "rows.jsonl"), shuffle=True)
    raw["generate"].update(n_test=5, n_practice=5, n_sft=10, cache_dir=str(tmp_path / "cache"))
    raw["evaluate"]["gsm8k"]["path"] = ""
    params = validate(raw)
    project = workspace(params, tmp_path / "ws")
    used = {r["question"] for f in ("data/clean/sft.jsonl", "data/clean/practice.jsonl", "data/generated/test.jsonl")
            for r in read_jsonl(project / f)}
    assert len(used) == 20
    draw(params, project, n=10, seed=777, out=project / "extra.jsonl")
    drawn = {r["question"] for r in read_jsonl(project / "extra.jsonl")}
    assert len(drawn) == 10 and not drawn & used
    with pytest.raises(DataError, match="--n 11"):   # 30 rows, 20 used: 10 is all there is
        draw(params, project, n=11, seed=778, out=project / "more.jsonl")


def test_the_workspace_paths_heldout_reads_are_outputs_of_dvc_yaml_stages():
    """heldout reads stage outputs by path; a path renamed in dvc.yaml alone would make it read nothing."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    # round stages are foreach templates (body under `do`); round 1 stands for every round
    outs = {(next(iter(out)) if isinstance(out, dict) else out).replace("${key}", "1")
            for stage in stages.values() for out in stage.get("do", stage).get("outs", [])}
    assert heldout.SEEDS in outs
    for path in heldout.SEEN:   # files inside a stage's output folder
        assert any(path == o or path.startswith(o.rstrip("/") + "/") for o in outs), path
    assert any(fnmatch(o, heldout.FOLLOWUP_SETS) for o in outs)
