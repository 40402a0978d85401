"""The dataset teacher: labelled GSM8K-format problems pass through as teacher records, with the
same splits, filters, provenance and journal as generated ones; and the procedural mix."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import ASDIV, GSM8K_TRAIN, ROOT
from tutorloop.config import ConfigError, validate
from tutorloop.data.jsonl import read_jsonl
from tutorloop.teachers import generation as generate


def _rows(n: int) -> list[dict]:
    rows = [{"question": f"Ann has {i + 3} boxes with {i + 2} pens in each box. How many pens does she have?",
             "answer": f"She has {i + 3}*{i + 2} = <<{i + 3}*{i + 2}={(i + 3) * (i + 2)}>>{(i + 3) * (i + 2)} pens.\n"
                       f"#### {(i + 3) * (i + 2)}"} for i in range(n)]
    rows.append({"question": "A problem whose label lost its final line. How many?", "answer": "It is 5."})
    rows.append({"question": "A problem with a rambling label. How long is it?",
                 "answer": "word " * 500 + "\n#### 7"})
    rows.append(dict(rows[0]))  # an exact duplicate
    return rows


def _config(path, **generate):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["generate"]["teacher"]["kind"] = "dataset"
    raw["generate"]["seeds"].update(source="jsonl", path=str(path), shuffle=False)
    raw["generate"].update(generate)
    raw["evaluate"]["gsm8k"]["path"] = ""
    return validate(raw).generate


def _generate(tmp_path, rows: list[dict], **generate_cfg):
    """Write `rows` as a GSM8K-format jsonl, run generate with the dataset teacher on it."""
    src = tmp_path / "gsm8k_like.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _config(src, **generate_cfg)
    counts = generate.generate_dataset(cfg, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    sets = {s: read_jsonl(tmp_path / "out" / f"{s}.jsonl") for s in generate.SPLITS}
    return src, cfg, counts, sets


def test_dataset_teacher_passes_labelled_problems_through(tmp_path):
    src, cfg, counts, sets = _generate(tmp_path, _rows(30), n_test=5, n_practice=5, n_sft=10, max_answer_chars=1800)
    assert {s: len(v) for s, v in sets.items()} == {"test": 5, "practice": 5, "sft": 10}
    qs = [r["question"] for v in sets.values() for r in v]
    assert len(set(qs)) == len(qs)                         # no overlap between splits
    src_rows = read_jsonl(src)
    for r in sets["sft"]:
        i = int(r["provenance"]["seed_id"].rsplit(":", 1)[1])
        assert r["solution"] == src_rows[i]["answer"]      # the label, verbatim, is the teacher's solution
        assert r["answer"] == src_rows[i]["answer"].split("####")[-1].strip()
        assert r["provenance"] == {"teacher": "dataset", "model": "gsm8k_like.jsonl", "seed_id": r["provenance"]["seed_id"],
                                   "agent_path": "seed"}
    # a re-run replays the journal and writes the same files
    again = generate.generate_dataset(cfg, tmp_path / "again", cache_dir=tmp_path / "cache", progress=False)
    assert again["journal_replayed_seeds"] >= counts["seeds"]   # whole chunks are journaled
    assert (tmp_path / "again" / "sft.jsonl").read_bytes() == (tmp_path / "out" / "sft.jsonl").read_bytes()


def test_dataset_teacher_filters_unlabelled_long_and_duplicate_rows(tmp_path):
    src = tmp_path / "gsm8k_like.jsonl"
    rows = _rows(6)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[-3:] + rows[:-3]))   # the bad rows first
    cfg = _config(src, n_test=2, n_practice=1, n_sft=3, max_answer_chars=1800)
    counts = generate.generate_dataset(cfg, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert counts["drop/unparseable"] == 1 and counts["drop/too_long"] == 1
    assert counts["drop/duplicate"] == 1
    with pytest.raises(RuntimeError, match="ran out"):
        generate.generate_dataset(cfg.model_copy(update={"n_sft": 10}), tmp_path / "more", cache_dir=tmp_path / "c2",
                     progress=False)


def test_procedural_share_mixes_training_sets_but_never_the_test_set(tmp_path):
    _, _, counts, sets = _generate(tmp_path, _rows(40), n_test=6, n_practice=10, n_sft=20, procedural_share=0.25)
    teachers = {s: [r["provenance"]["teacher"] for r in v] for s, v in sets.items()}
    assert set(teachers["test"]) == {"dataset"}
    assert teachers["sft"].count("procedural") == 5            # 25% of 20
    assert teachers["practice"].count("procedural") == round(10 * 0.25)
    assert counts["teacher/sft/dataset"] == 15


def test_dataset_teacher_config_checks():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["generate"]["teacher"]["kind"] = "dataset"
    with pytest.raises(ConfigError, match="seeds.source"):
        validate(raw)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["generate"]["procedural_share"] = 0.2
    with pytest.raises(ConfigError, match="procedural_share"):
        validate(raw)


@pytest.mark.skipif(not GSM8K_TRAIN.exists(), reason="../shared/data/gsm8k/train.jsonl not present")
def test_dataset_teacher_on_real_gsm8k_train(tmp_path):
    cfg = _config(GSM8K_TRAIN, n_test=100, n_practice=100, n_sft=300)
    cfg = cfg.model_copy(update={"seeds": cfg.seeds.model_copy(update={"shuffle": True})})
    counts = generate.generate_dataset(cfg, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    sets = {s: read_jsonl(tmp_path / "out" / f"{s}.jsonl") for s in generate.SPLITS}
    assert {s: len(v) for s, v in sets.items()} == {"test": 100, "practice": 100, "sft": 300}
    assert {r["family"] for v in sets.values() for r in v} == {"gsm8k"}
    assert all(r["solution"].rstrip().split("\n")[-1].startswith("####") for r in sets["sft"])
    assert sum("<<" in r["solution"] for r in sets["sft"]) > 0.9 * 300   # calculator annotations kept
    assert counts.get("drop/unparseable", 0) == 0


def test_jsonl_round_trips_unicode_line_separators(tmp_path):
    """GSM8K train holds U+2028 inside a solution; json.dumps(ensure_ascii=False) keeps it raw, and
    str.splitlines() used to cut the record there (generate then failed on its own sft.jsonl)."""
    from tutorloop.data.jsonl import read_jsonl, write_jsonl

    rows = [{"question": "a\u2028b", "solution": "c\x85d\u2029e\x0cf", "answer": "1"}, {"question": "g"}]
    write_jsonl(tmp_path / "x.jsonl", rows)
    assert read_jsonl(tmp_path / "x.jsonl") == rows


def test_inputs_stage_snapshots_gsm8k_and_seeds_and_empties_what_is_absent(params_factory, tmp_path, monkeypatch):
    """The `inputs` stage copies what the loop reads from outside the project; consumers read the
    copies (the DVC deps) and get the same problems and seed ids as from the source itself."""
    from components import inputs
    from tutorloop.data.evalsets import gsm8k_problems, load_gsm8k
    from tutorloop.teachers.generation import SeedSource

    src = tmp_path / "gsm.jsonl"
    src.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}",
                                       "extra": "x"}) + "\n" for i in range(5)))
    from tutorloop.config import validate

    raw = params_factory().model_dump(by_alias=True)
    raw["evaluate"]["gsm8k"].update(path=str(src), limit=3)
    raw["generate"]["seeds"].update(source="jsonl", path=str(src), offset=3)  # past the GSM8K rows
    raw["generate"]["teacher"]["kind"] = "dataset"
    params = validate(raw)
    m = inputs.snapshot(params, tmp_path / "inputs")
    assert m["gsm8k"]["rows"] == 3 and m["seeds"]["rows"] == 5 and len(m["gsm8k"]["source_sha256"]) == 64
    assert gsm8k_problems(params.evaluate.gsm8k, tmp_path / "inputs/gsm8k.jsonl") == load_gsm8k(params.evaluate.gsm8k)
    copy, direct = SeedSource(params.generate, tmp_path / "inputs/seeds.jsonl"), SeedSource(params.generate)
    assert copy.rows == direct.rows and copy.rows[0]["seed_id"].startswith("gsm.jsonl:")
    raw["evaluate"]["gsm8k"]["path"] = str(tmp_path / "absent.jsonl")      # a typo: an error, not a quiet skip
    raw["generate"]["seeds"]["source"], raw["generate"]["teacher"]["kind"] = "procedural", "procedural"
    from tutorloop.errors import DataError

    with pytest.raises(DataError, match="evaluate.gsm8k.path: .*absent.jsonl does not exist"):
        inputs.snapshot(validate(raw), tmp_path / "inputs")
    raw["evaluate"]["gsm8k"]["path"] = "../shared/data/gsm8k/train.jsonl"  # the default, on a machine without it
    monkeypatch.chdir(tmp_path)
    params = validate(raw)
    m = inputs.snapshot(params, tmp_path / "inputs")
    assert m["gsm8k"]["rows"] == 0 and m["seeds"]["rows"] == 0
    assert (tmp_path / "inputs/gsm8k.jsonl").read_text() == ""
    assert gsm8k_problems(params.evaluate.gsm8k, tmp_path / "inputs/gsm8k.jsonl") is None


def _asdiv_rows() -> list[dict]:
    """ASDiv-shaped rows: a bare-answer label, a formula, a grade and a type."""
    rows = [{"question": f"Tom has {i + 2} red and {i + 5} blue marbles. How many marbles does he have?",
             "answer": f"{2 * i + 7}\n#### {2 * i + 7}", "formula": f"{i + 2}+{i + 5}={2 * i + 7}",
             "grade": 1, "type": "Addition"} for i in range(12)]
    rows += [{"question": f"The ratio of cats to dogs is 3:{i + 4}. There are {3 * (i + 1)} cats. How many dogs?",
              "answer": f"{(i + 4) * (i + 1)}\n#### {(i + 4) * (i + 1)}",
              "formula": f"3:{i + 4}={3 * (i + 1)}:{(i + 4) * (i + 1)}", "grade": 5, "type": "Ratio"}
             for i in range(6)]
    rows.append({"question": "Sue has 4 pens and buys 3 more. How many pens does she have now?",
                 "answer": "8\n#### 8", "formula": "4+3=7", "grade": 1, "type": "Addition"})   # a wrong label
    return rows


def test_formula_solutions_are_written_and_checked_against_the_label():
    assert generate.formula_solution("(7-5)*5=10", "10") == "(7-5)*5 = <<(7-5)*5=10>>10\n#### 10"
    assert generate.formula_solution("7 + 2 = 9", "9") == "7+2 = <<7+2=9>>9\n#### 9"
    assert generate.formula_solution("10/4=2.5", "2.5").endswith("#### 2.5")
    for formula, answer in [("4+3=7", "8"), ("2:3=12:18", "18"), ("94/8=11 r6", "6"), ("LCM[20,10,8]=40", "40"),
                            ("60 + 30 = 90; 90/3=30", "30"), ("10/3=3.333", "3.333")]:
        assert generate.formula_solution(formula, answer) is None, formula


def test_dataset_teacher_writes_asdiv_solutions_and_keeps_bare_answers_out_of_training(tmp_path):
    rows = _asdiv_rows()
    add, ratio, wrong = rows[:12], rows[12:18], rows[18]
    # in stream order: the dev split meets both kinds, the training splits a ratio and the wrong label
    rows = add[:4] + ratio[:3] + add[4:6] + [wrong] + add[6:8] + ratio[3:4] + add[8:]
    _, _, counts, sets = _generate(tmp_path, rows, n_test=8, n_practice=3, n_sft=4)
    for split in ("sft", "practice"):
        for r in sets[split]:
            assert r["provenance"]["solution"] == "formula" and r["meta"] == {"grade": 1, "type": "Addition"}
            assert "<<" in r["solution"] and r["solution"].endswith(f"#### {r['answer']}")
            assert generate._rederives(r)                   # its arithmetic reads back to the label
    assert counts["drop/answer_only"] == 2                  # the wrong label and the ratio row
    # the dev split is ASDiv as it is: a ratio problem stays, with its bare label as the solution
    kinds = {r["provenance"]["solution"] for r in sets["test"]}
    assert kinds <= {"formula", "answer_only"}
    test_ratio = [r for r in sets["test"] if r["meta"]["type"] == "Ratio"]
    assert all(r["provenance"]["solution"] == "answer_only" for r in test_ratio)
    # the mislabelled row is never trained on: its formula does not give its label
    assert all("Sue has 4 pens" not in r["question"] for s in ("sft", "practice") for r in sets[s])


@pytest.mark.skipif(not ASDIV.exists(), reason="../shared/data/asdiv/asdiv.jsonl not present")
def test_asdiv_recipe_generates_its_splits_from_the_real_file(tmp_path):
    from tutorloop.config.recipes import apply_overrides, complete, recipe_overrides

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = apply_overrides(base, complete(base, recipe_overrides("asdiv")))
    raw["generate"]["seeds"]["path"] = str(ASDIV)          # the recipe's path is relative to the project
    cfg = validate(raw).generate
    counts = generate.generate_dataset(cfg, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    sets = {s: read_jsonl(tmp_path / "out" / f"{s}.jsonl") for s in generate.SPLITS}
    assert {s: len(v) for s, v in sets.items()} == {"test": cfg.n_test, "practice": cfg.n_practice, "sft": cfg.n_sft}
    assert {r["family"] for v in sets.values() for r in v} == {"asdiv"}
    assert all(r["provenance"]["solution"] == "formula" for s in ("sft", "practice") for r in sets[s])
    assert all(generate._rederives(r) for r in sets["sft"])
    # the dev split keeps the problem types the formulas cannot write (ASDiv has ~27% of them)
    share = sum(r["provenance"]["solution"] == "answer_only" for r in sets["test"]) / len(sets["test"])
    assert 0.15 < share < 0.40
    assert counts["drop/answer_only"] > 0 and counts.get("drop/unparseable", 0) == 0
