"""Evaluation options (few-shot, maj@k) and the report (CSV, PNG, table, CLI)."""

import json

import pytest

from components import evaluate
from tests.conftest import ROOT
from tutorloop.data.jsonl import read_jsonl
from tutorloop.eval import report, scoring
from tutorloop.modeling import chat_prompts, load
from tutorloop.teachers import generation as generate

pytestmark = pytest.mark.usefixtures("no_tracking")


def test_majority_vote():
    assert scoring.majority(["3", "5", "3", None]) == "3"
    assert scoring.majority(["5", "3"]) == "5"  # tie: first seen
    assert scoring.majority([None, None]) is None


def test_fewshot_prompt_holds_the_worked_examples(tiny_model_dir):
    _, tok = load(tiny_model_dir)
    shots = [("What is 2+3?", "2+3 = <<2+3=5>>5\n#### 5")]
    prompt = chat_prompts(tok, ["What is 4+4?"], "sys", "{question}", shots)[0]
    assert prompt.index("What is 2+3?") < prompt.index("#### 5") < prompt.index("What is 4+4?")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_fewshot_and_majority_evaluation(params_factory, tmp_path):
    params = params_factory()
    ev = params.evaluate.model_copy(update={"fewshot": 2, "maj_k": 3, "gsm8k": params.evaluate.gsm8k.model_copy(update={"path": ""})})
    params = params.model_copy(update={"evaluate": ev})
    generate.generate_dataset(params.generate, tmp_path / "gen", cache_dir=tmp_path / "cache")
    metrics = evaluate.run(params, _model(params), tmp_path / "gen/test.jsonl",
                           tmp_path / "m.json", tmp_path / "e", shots_file=tmp_path / "gen/sft.jsonl")
    preds = read_jsonl(tmp_path / "e/predictions.jsonl")
    from fractions import Fraction

    # maj@3 is the share of problems whose majority answer equals the reference (checked by exact
    # arithmetic here, not through the grader), and a vote exists wherever one sample was readable
    assert all((p["majority"] is not None and Fraction(p["majority"]) == Fraction(p["reference"]))
               == p["majority_correct"] for p in preds)
    assert metrics["maj_at_3"] == pytest.approx(sum(p["majority_correct"] for p in preds) / len(preds))
    assert "strict_accuracy" in metrics and metrics["strict_accuracy"] <= metrics["accuracy"]
    assert "gsm8k" not in metrics and metrics["protocol"]
    # every metric name is one MLflow accepts (it rejects '@', for one)
    from mlflow.utils.validation import _validate_metric_name

    for name in scoring.flat_metrics(metrics):
        _validate_metric_name(name)
    with pytest.raises(ValueError, match="--shots"):
        evaluate.run(params, _model(params), tmp_path / "gen/test.jsonl", tmp_path / "m.json", tmp_path / "e")


def _model(params):
    from pathlib import Path

    return Path(params.base_model.source)


def write_metrics(root, key, acc, n=100, gsm=None):
    m = {"accuracy": acc, "n": n, "correct": int(acc * n), "ci95_low": acc - 0.05, "ci95_high": acc + 0.05,
         "strict_accuracy": acc / 2}
    if gsm is not None:
        m["gsm8k"] = {"accuracy": gsm, "n": 50, "ci95_low": 0.0, "ci95_high": gsm + 0.1}
    (root / "metrics").mkdir(exist_ok=True)
    (root / f"metrics/{key}.json").write_text(json.dumps(m))


def test_report_orders_checkpoints_and_writes_plot(tmp_path):
    for key, acc in [("2", 0.5), ("base", 0.01), ("0", 0.4), ("1", 0.45), ("10", 0.6)]:
        write_metrics(tmp_path, key, acc, gsm=0.02)
    (tmp_path / "data/round-1").mkdir(parents=True)
    (tmp_path / "data/round-1/feedback_metrics.json").write_text(json.dumps({"pairs": 123, "practice_pass_rate": 0.4}))
    data = report.write_report(tmp_path / "metrics", tmp_path / "reports")
    assert [r["checkpoint"] for r in data] == ["base", "0", "1", "2", "10"]
    assert data[2]["pairs"] == ""  # the stage reads only its declared dep, metrics/
    assert report.rows(tmp_path / "metrics", tmp_path / "data")[2]["pairs"] == 123
    assert data[2]["strict_accuracy"] == 0.45 / 2  # strict beside lenient
    csv_lines = (tmp_path / "reports/accuracy.csv").read_text().splitlines()
    assert csv_lines[0].startswith("checkpoint,accuracy") and len(csv_lines) == 6
    assert (tmp_path / "reports/accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_each_round_says_what_it_trained_on(tmp_path):
    """Feedback writes pairs for every method; a KTO or RFT round is described by its own rows."""
    from typer.testing import CliRunner

    from tutorloop.cli import app

    for key, acc in [("base", 0.02), ("0", 0.36), ("1", 0.38), ("2", 0.42), ("3", 0.40)]:
        write_metrics(tmp_path, key, acc)
    trained = {"1": {"method_rft": 1.0, "method_kto": 0.0, "examples": 149, "student_solutions": 49},
               "2": {"method_rft": 0.0, "method_kto": 1.0, "examples": 96, "desirable": 40},
               "3": {"method_rft": 0.0, "method_kto": 0.0, "pairs": 48}}
    for key, pref in trained.items():
        (tmp_path / f"data/round-{key}").mkdir(parents=True)
        (tmp_path / f"data/round-{key}/feedback_metrics.json").write_text(json.dumps({"pairs": 24}))
        (tmp_path / f"data/round-{key}/preference_metrics.json").write_text(json.dumps(pref))
    data = report.rows(tmp_path / "metrics", tmp_path / "data")
    assert [(r["method"], r["trained_on"], r["student_rows"]) for r in data] == [
        ("", "", ""), ("", "", ""), ("rft", 149, 49), ("kto", 96, ""), ("dpo", 48, "")]
    assert all(r["pairs"] == 24 for r in data[2:])    # what feedback offered, kept beside
    result = CliRunner().invoke(app, ["report", "--project", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "149 rft rows (49 own)" in result.output and "96 kto rows" in result.output
    assert "48 pairs" in result.output and "24 pairs" not in result.output


def test_demo_and_run_end_with_the_report(tmp_path, monkeypatch):
    """`make demo` and `tutorloop run` print the table when the loop is done: both called the Typer
    command as a function, whose unfilled options (truthy OptionInfo objects) sent it down the
    --save path, so every demo crashed after its last stage. The loop itself is stubbed here."""
    from typer.testing import CliRunner

    from tutorloop.cli import app
    from tutorloop.cli import loop

    write_metrics(tmp_path, "base", 0.01)
    write_metrics(tmp_path, "0", 0.425)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.setattr(loop, "doctor", lambda project: None)
    monkeypatch.setattr(loop, "_run_recipe", lambda name, project, **kw: 0)
    monkeypatch.setattr(loop, "_run_flows", lambda *a, **kw: [{"stage": "sft", "ran": True}])
    for args in (["demo", "--size", "quick"], ["run"]):
        result = CliRunner().invoke(app, [*args, "--project", str(tmp_path)], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (args, result.output, result.exception)
        assert "round 0 (SFT)" in result.output and "42.5%" in result.output


def test_cli_report_prints_the_table(tmp_path):
    from typer.testing import CliRunner

    from tutorloop.cli import app

    write_metrics(tmp_path, "base", 0.01)
    write_metrics(tmp_path, "0", 0.425, gsm=0.01)
    result = CliRunner().invoke(app, ["report", "--project", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "round 0 (SFT)" in result.output and "42.5%" in result.output
    assert (tmp_path / "reports/accuracy.png").exists()
    assert "pass@1/4/16" not in result.output          # no sampled evaluation: no headroom column
    empty = CliRunner().invoke(app, ["report", "--project", str(tmp_path / "nothing")])
    assert empty.exit_code == 1


def test_an_experiments_checkpoints_get_their_stage_minutes_and_a_control_its_own(tracked_cwd, capsys):
    """`dvc exp run` (a recipe) runs each stage alone: no round parent run, only the stage run's
    own tags. Each checkpoint sums the latest finished run of each of its stages; control@k
    (stage `control`, round tag k) counts for control-k, with its evaluate and register runs."""
    from mlflow import MlflowClient

    from tutorloop.runtime import tracking

    tmp_path = tracked_cwd
    with tracking.stage_run("control", {}, round_key="1") as log:   # as components/control.py opens it
        real = log.run_id
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = client.get_run(real).data.tags
    assert (tags["tutorloop.stage"], tags["tutorloop.round"]) == ("control", "1")
    assert "mlflow.parentRunId" not in tags
    exp_id = client.get_experiment_by_name(tracking.experiment_name()).experiment_id
    clock = [1_800_000_000_000]   # later than the real run above: these are the latest

    def ran(stage, key, minutes, status="FINISHED"):
        run = client.create_run(exp_id, start_time=clock[0], tags={"tutorloop.stage": stage, **(
            {"tutorloop.round": key} if key is not None else {})})
        clock[0] += int(minutes * 60_000)
        client.set_terminated(run.info.run_id, status=status, end_time=clock[0])

    for stage, key, minutes in [("base_model", None, 1), ("generate", None, 2), ("decontaminate", None, 0.5),
                                ("evaluate", "base", 3), ("register", "base", 0.5), ("sft", "0", 10),
                                ("evaluate", "0", 3), ("register", "0", 0.5), ("practice", "1", 4),
                                ("feedback", "1", 1), ("followup", "1", 0.5), ("preference", "1", 6),
                                ("control", "1", 5), ("evaluate", "1", 3), ("register", "1", 0.5),
                                ("evaluate", "control-1", 3), ("register", "control-1", 0.5), ("report", None, 1)]:
        ran(stage, key, minutes)
    ran("preference", "1", 60, status="KILLED")    # a stopped re-run made nothing
    assert report.stage_minutes(tmp_path) == pytest.approx({"base": 3.5, "0": 17.0, "1": 15.0, "control-1": 8.5})
    for key, acc in [("base", 0.1), ("0", 0.3), ("1", 0.35), ("control-1", 0.32)]:
        write_metrics(tmp_path, key, acc)
    # the table `dvc exp run` ends with is the report stage's: it has the minutes too, whole in a log
    from argparse import Namespace

    from components.report import main as report_stage

    capsys.readouterr()
    report_stage.body(None, Namespace(metrics=tmp_path / "metrics", out=tmp_path / "reports", eval=tmp_path / "eval"),
                      tracking.StageLog(None))
    last = {(w[0] if w[0] == "base" else " ".join(w[:2])): w[-1] for w in map(str.split, capsys.readouterr().out
                                                                               .splitlines()) if w}
    assert (last["base"], last["round 0"], last["round 1"], last["control 1"]) == ("3.5", "17.0", "15.0", "8.5")


def test_report_shows_pass_at_k_and_maj_at_k_per_checkpoint(tmp_path):
    from typer.testing import CliRunner

    from tutorloop.cli import app

    write_metrics(tmp_path, "base", 0.01)
    write_metrics(tmp_path, "0", 0.2)
    m = json.loads((tmp_path / "metrics/0.json").read_text())
    m.update(pass_at_1=0.18, pass_at_4=0.41, pass_at_16=0.63, maj_at_16=0.27)
    (tmp_path / "metrics/0.json").write_text(json.dumps(m))
    (tmp_path / "data/round-1").mkdir(parents=True)
    write_metrics(tmp_path, "1", 0.22)
    (tmp_path / "data/round-1/feedback_metrics.json").write_text(json.dumps(
        {"pairs": 10, "practice_pass_rate": 0.05, "practice_pass_at_1": 0.05, "practice_pass_at_4": 0.16}))
    data = report.rows(tmp_path / "metrics", tmp_path / "data")
    assert (data[1]["pass_at_16"], data[1]["maj_k"], data[1]["maj_accuracy"]) == (0.63, 16, 0.27)
    assert data[2]["practice_pass_at_4"] == 0.16 and data[0]["pass_at_1"] == ""
    result = CliRunner().invoke(app, ["report", "--project", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "pass@1/4/16" in result.output and "18%/41%/63% · 27%@16" in result.output
    header = (tmp_path / "reports/accuracy.csv").read_text().splitlines()[0].split(",")
    assert {"pass_at_1", "pass_at_4", "pass_at_16", "maj_accuracy", "practice_pass_at_4"} <= set(header)


def test_experiments_are_read_from_dvc_exp_show_json(tmp_path):
    """The shape `dvc exp show --json` prints (DVC 3.67): workspace, the branch tip, and its
    experiments under experiments[].revs[]; named experiments win over the rows that repeat them."""
    from tutorloop.eval.report import compare, experiments

    def data(method, acc):
        return {"metrics": {"metrics/0.json": {"data": {"accuracy": 0.19, "ci95_low": 0.14, "ci95_high": 0.25}},
                            "metrics/2.json": {"data": {"accuracy": acc}},
                            "data/round-2/practice_metrics.json": {"data": {"seconds": 240.0, "pass_rate": 0.1}},
                            "data/round-2/preference_metrics.json": {"data": {"train_seconds": 60.0 if method == "kto" else 120.0}},
                            "data/clean/decontamination.json": {"error": {"type": "FileNotFoundError"}}},
                "params": {"params.yaml": {"data": {"rounds": {"2": {"dpo": {"method": method}}}}}}}

    shown = [{"rev": "workspace", "name": None, "data": data("kto", 0.195), "experiments": None},
             {"rev": "abc", "name": "main", "data": data("dpo", 0.215),
              "experiments": [{"name": "kto-r2", "revs": [{"rev": "d1", "name": "kto-r2", "data": data("kto", 0.195)}]},
                              {"name": "dpo", "revs": [{"rev": "d2", "name": "dpo", "data": data("dpo", 0.215)}]}]}]
    exps = experiments(shown)
    assert [(e["name"], e["method"], e["accuracy"]["2"][0]) for e in exps] == [("kto-r2", "2:kto", 0.195),
                                                                               ("dpo", "2:dpo", 0.215)]
    # what each round cost (practice + training minutes): methods are compared on one budget
    assert [e["minutes"] for e in exps] == [{"2": 5.0}, {"2": 6.0}]
    out = compare(exps, tmp_path / "compare.png")
    rows = (tmp_path / "compare.csv").read_text().splitlines()
    assert out.stat().st_size > 0 and len(rows) == 5
    assert rows[0].endswith(",round_minutes") and rows[2] == "kto-r2,2:kto,2,0.195,0.195,0.195,5.0"


def test_report_pairs_each_checkpoint_with_base_and_previous(tmp_path):
    """McNemar on the shared problems: won/lost counts and p against base and the round before,
    pinned against scipy's exact binomial test; no comparison where the problem ids differ."""
    from scipy.stats import binomtest

    from tutorloop.data.jsonl import write_jsonl

    right = {"base": {0}, "0": {0, 1, 2, 3, 4, 5}, "1": {1, 2, 3, 4, 5, 6, 7}, "2": set()}
    for key in right:
        write_metrics(tmp_path, key, len(right[key]) / 10, n=10)
        write_jsonl(tmp_path / f"eval/{key}/predictions.jsonl",
                    [{"id": f"p{i}", "correct": i in right[key]} for i in range(10)])
    # round 2 was scored on other problems: nothing to pair it with
    write_jsonl(tmp_path / "eval/2/predictions.jsonl", [{"id": f"q{i}", "correct": True} for i in range(10)])
    data = {r["checkpoint"]: r for r in report.write_report(tmp_path / "metrics", tmp_path / "reports", tmp_path / "eval")}
    assert data["base"]["p_vs_base"] == "" and data["base"]["p_vs_prev"] == ""
    assert (data["0"]["won_vs_base"], data["0"]["lost_vs_base"]) == (5, 0)
    assert data["0"]["p_vs_base"] == pytest.approx(binomtest(5, 5, 0.5, alternative="greater").pvalue)
    assert (data["1"]["won_vs_prev"], data["1"]["lost_vs_prev"]) == (2, 1)   # +6,+7 / -0
    assert data["1"]["p_vs_prev"] == pytest.approx(binomtest(2, 3, 0.5, alternative="greater").pvalue)
    assert (data["1"]["won_vs_base"], data["1"]["lost_vs_base"]) == (7, 1)
    assert data["2"]["p_vs_base"] == "" and data["2"]["p_vs_prev"] == ""
    header = (tmp_path / "reports/accuracy.csv").read_text().splitlines()[0]
    assert "won_vs_base,lost_vs_base,p_vs_base,won_vs_prev,lost_vs_prev,p_vs_prev" in header
    # without eval/ the stage still reports (the columns stay empty)
    assert report.write_report(tmp_path / "metrics", tmp_path / "r2")[1]["p_vs_base"] == ""


def test_report_pairs_each_round_with_sft_the_previous_round_and_its_control(tmp_path):
    """The rounds' evidence table: round k against SFT, round k-1 and control-k (its training on
    the teacher's solutions alone); a control sits after its round, paired with SFT and with the
    round's start, and is no round's `prev`."""
    from tutorloop.data.jsonl import write_json, write_jsonl

    right = {"base": {0}, "0": {0, 1, 2}, "1": {0, 1, 2, 3, 4, 5}, "control-1": {0, 1, 2, 3},
             "2": {0, 1, 2, 3, 4, 5, 6, 7}, "control-2": {0, 1, 2, 3, 4, 5, 8}}
    for key in right:
        write_metrics(tmp_path, key, len(right[key]) / 10, n=10)
        write_jsonl(tmp_path / f"eval/{key}/predictions.jsonl",
                    [{"id": f"p{i}", "correct": i in right[key]} for i in range(10)])
    write_json({"control": 1.0, "examples": 42, "method_rft": 1.0}, tmp_path / "data/round-1/control_metrics.json")
    write_json({"practice_pass_rate": 0.4}, tmp_path / "data/round-1/feedback_metrics.json")
    got = report.rows(tmp_path / "metrics", tmp_path / "data", tmp_path / "eval")
    assert [r["checkpoint"] for r in got] == ["base", "0", "1", "control-1", "2", "control-2"]
    data = {r["checkpoint"]: r for r in got}
    cells = {k: {t: (r[f"won_vs_{t}"], r[f"lost_vs_{t}"]) for t in ("sft", "prev", "control")} for k, r in data.items()}
    assert cells["1"] == {"sft": (3, 0), "prev": (3, 0), "control": (2, 0)}
    assert cells["2"] == {"sft": (5, 0), "prev": (2, 0), "control": (2, 1)}      # prev is round 1, not control-1
    assert cells["control-1"] == {"sft": (1, 0), "prev": (1, 0), "control": ("", "")}
    assert cells["control-2"]["prev"] == (1, 0)                                  # its round's start: round 1
    assert data["control-1"]["trained_on"] == 42 and data["control-1"]["method"] == "control"
    assert data["control-1"]["practice_pass_rate"] == "" and data["1"]["practice_pass_rate"] == 0.4
    assert report.label("control-1") == "control 1"


class _Written:
    """A sampler whose completions are written here (greedy: one per problem; sampled: a list),
    so scoring's arithmetic is checked against numbers worked out by hand below."""

    def __init__(self, greedy: list[str], sampled: list[list[str]]):
        self.greedy, self.sampled = greedy, sampled

    def __call__(self, conversations, *, k=1, do_sample=False, **kw):
        from tutorloop.modeling import Generation

        texts = [[t] for t in self.greedy] if not do_sample else self.sampled
        return Generation(texts=texts, new_tokens=80, seconds=2.0)

    def metrics(self, gen):
        return {}


def test_scoring_counts_what_the_grader_says(params_factory):
    """8 problems, answer 10 each: 3 right with a marker, 1 right without one (lenient only),
    4 wrong. accuracy 4/8, strict 3/8, Wilson 95% for 4/8 = (0.2152, 0.7848), maj@3 2/8."""
    problems = [{"id": f"q{i}", "question": "?", "answer": "10"} for i in range(8)]
    greedy = ["#### 10", "The answer is 10.", "\\boxed{10}", "so there are 10 left", "#### 9", "#### 11",
              "no idea", "The answer is 1,0"]
    sampled = [["#### 10", "#### 10", "#### 3"], ["#### 3", "#### 3", "#### 10"]] + [["#### 7"] * 3] * 5 + \
              [["10", "#### 10", "x"]]
    params = params_factory()
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"maj_k": 3, "pass_k": [1, 2, 3, 4]})})
    preds, stats = scoring.score(_Written(greedy, sampled), params.evaluate, params.prompt, problems, "hand")
    assert [p["correct"] for p in preds] == [True, True, True, True, False, False, False, False]
    assert [p["strict_correct"] for p in preds] == [True, True, True, False, False, False, False, False]
    assert (stats["correct"], stats["n"], stats["accuracy"], stats["strict_accuracy"]) == (4, 8, 0.5, 0.375)
    assert (round(stats["ci95_low"], 4), round(stats["ci95_high"], 4)) == (0.2152, 0.7848)
    assert stats["unparsed_rate"] == 1 / 8 and stats["tokens_per_second"] == 40.0
    assert [p["majority_correct"] for p in preds] == [True, False] + [False] * 5 + [True]
    assert stats["maj_at_3"] == 2 / 8
    # samples right per problem: 2, 1, 0 x 5, 2 (of 3). pass@1 = mean c/n; pass@2 = mean of
    # 1 - C(n-c,2)/C(n,2): 1, 2/3, 0.., 1; pass@3 = share with any right; pass@4 > n: not reported
    assert [p["samples_correct"] for p in preds] == [2, 1, 0, 0, 0, 0, 0, 2]
    assert stats["pass_at_1"] == pytest.approx(5 / 24) and stats["pass_at_2"] == pytest.approx(1 / 3)
    assert stats["pass_at_3"] == pytest.approx(3 / 8) and "pass_at_4" not in stats
