"""The dataset teacher: labelled GSM8K-format problems pass through as teacher records, with the
same splits, filters, provenance and journal as generated ones; and the procedural mix."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import GSM8K_TRAIN, ROOT
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


def test_inputs_stage_snapshots_gsm8k_and_seeds_and_empties_what_is_absent(params_factory, tmp_path):
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
    raw["evaluate"]["gsm8k"]["path"] = str(tmp_path / "absent.jsonl")      # a user without the file
    raw["generate"]["seeds"]["source"], raw["generate"]["teacher"]["kind"] = "procedural", "procedural"
    params = validate(raw)
    m = inputs.snapshot(params, tmp_path / "inputs")
    assert m["gsm8k"]["rows"] == 0 and m["seeds"]["rows"] == 0
    assert (tmp_path / "inputs/gsm8k.jsonl").read_text() == ""
    assert gsm8k_problems(params.evaluate.gsm8k, tmp_path / "inputs/gsm8k.jsonl") is None
