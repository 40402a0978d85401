"""More held-out problems (`tutorloop heldout`) and paired comparisons of scored sets (`tutorloop paired`).

The drawn problems must be new to the workspace — no copy and no n-gram overlap with any SFT,
practice or held-out problem — or a "bigger held-out set" would score memorised problems.
"""

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tutorloop.data.contamination import EvalIndex
from tutorloop.data.jsonl import read_jsonl, write_jsonl
from tutorloop.errors import DataError
from tutorloop.eval.stats import mcnemar_p
from tutorloop.teachers import generation
from tutorloop.teachers.heldout import disjoint, draw

pytestmark = pytest.mark.usefixtures("no_tracking")

SEEN = [{"question": "Ann has 3 apples and buys 4 more apples at the market on a sunny Tuesday morning. "
                     "How many apples does Ann have now?"}]


def test_disjoint_drops_copies_and_overlaps_and_keeps_new_problems():
    copy = {"question": "  Ann has 3 apples and buys 4 more apples at the market on a sunny Tuesday\nmorning. "
                        "How many apples does Ann have now?"}
    embedded = {"question": "Before lunch: " + SEEN[0]["question"] + " Then she eats one. How many are left?"}
    new = {"question": "A train travels 60 km in one hour and then 45 km in the next hour. How far did it go?"}
    assert disjoint([copy, embedded, new], SEEN, ngram=13, min_overlap=0.5) == [new]


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
    project = workspace(params, tmp_path)
    seen = [r for f in ("data/clean/sft.jsonl", "data/clean/practice.jsonl", "data/generated/test.jsonl")
            for r in read_jsonl(project / f)]
    out = project / "data" / "extra" / "heldout.jsonl"
    counts = draw(params, project, n=20, seed=777, out=out)
    rows = read_jsonl(out)
    assert counts["written"] == len(rows) == 20
    assert [r["id"] for r in rows] == [f"extra-{i}" for i in range(20)]
    assert all(r["answer"] not in ("", None) for r in rows)
    index = EvalIndex(seen, params.decontaminate.ngram)
    questions = {" ".join(r["question"].split()) for r in seen}
    for r in rows:
        assert " ".join(r["question"].split()) not in questions
        assert index.overlap(r["question"]) < params.decontaminate.min_overlap
    # the same draw again writes the same file: a paired comparison can be re-run from the command
    draw(params, project, n=20, seed=777, out=project / "again.jsonl")
    assert read_jsonl(project / "again.jsonl") == rows


def test_draw_refuses_the_workspace_seed_and_a_workspace_without_its_sets(params_factory, tmp_path):
    params = params_factory()
    with pytest.raises(DataError, match="data/clean/sft.jsonl"):
        draw(params, tmp_path, n=5, seed=777, out=tmp_path / "x.jsonl")
    with pytest.raises(DataError, match="generate.seed"):
        draw(params, tmp_path, n=5, seed=params.generate.seed, out=tmp_path / "x.jsonl")


def test_paired_prints_pass_at_1_and_mcnemar_against_the_first_and_previous(tmp_path, monkeypatch):
    ids = [f"p{i}" for i in range(10)]
    a = [True, True, True, False, False, False, False, False, False, False]     # 3/10
    b = [True, True, False, True, True, True, False, False, False, False]       # 5/10: +3/-1 vs a
    c = [True, True, False, True, True, True, True, True, False, False]         # 7/10: +2/-0 vs b, +5/-1 vs a
    for name, marks in (("a", a), ("b", b), ("c", c)):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "predictions.jsonl", [{"id": i, "correct": m} for i, m in zip(ids, marks)])
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["paired", "a", "b/predictions.jsonl", "c"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split()[1].split("/")[0]: line for line in result.output.splitlines()
            if line.split()[1:2] and line.split()[1].split("/")[0] in ("a", "b", "c")}
    assert "30.0%" in rows["a"] and "50.0%" in rows["b"] and "70.0%" in rows["c"]
    assert f"+3/-1 p={mcnemar_p(1, 3):.2g}" in rows["b"]
    assert f"+5/-1 p={mcnemar_p(1, 5):.2g}" in rows["c"] and f"+2/-0 p={mcnemar_p(0, 2):.2g}" in rows["c"]


def test_paired_reports_a_missing_file_as_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["paired", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
    assert "no such file" in result.output
