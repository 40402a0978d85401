"""Decontamination: planted benchmark problems are caught and dropped; a clean set passes."""

import json

import pytest
from conftest import GSM8K_TRAIN

from components import decontaminate
from tutorloop.config import Decontaminate, Gsm8k
from tutorloop.data import contamination
from tutorloop.data.jsonl import read_jsonl, write_jsonl
from tutorloop.teachers import generation as generate

pytestmark = pytest.mark.usefixtures("no_tracking")

HANDMADE_GSM8K = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                 "in May. How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
                 "babysitting. How much did she earn?", "answer": "#### 10"},
]


def with_gsm8k(params, path, limit=0):
    ev = params.evaluate.model_copy(update={"gsm8k": Gsm8k(path=str(path), limit=limit)})
    return params.model_copy(update={"evaluate": ev})


def setup_generated(params, tmp_path):
    generate.generate_dataset(params.generate, tmp_path / "gen", cache_dir=tmp_path / "cache")
    return tmp_path / "gen"


def test_clean_set_passes(params_factory, tmp_path):
    params = params_factory()
    gen = setup_generated(params, tmp_path)
    write_jsonl(tmp_path / "gsm8k.jsonl", HANDMADE_GSM8K)
    stats = decontaminate.run(with_gsm8k(params, tmp_path / "gsm8k.jsonl"), gen, tmp_path / "clean")
    assert stats["dropped_share"] == 0
    assert read_jsonl(tmp_path / "clean/sft.jsonl") == read_jsonl(gen / "sft.jsonl")
    assert json.loads((tmp_path / "clean/decontamination.json").read_text())["kept/sft"] == 24


def plant(gen, problems, split="sft"):
    rows = read_jsonl(gen / f"{split}.jsonl")
    planted = [{"id": f"planted-{i}", "question": p["question"].upper() + "  ", "solution": p["answer"],
                "answer": p["answer"].split("####")[-1].strip()} for i, p in enumerate(problems)]
    write_jsonl(gen / f"{split}.jsonl", rows + planted)
    return len(rows)


def test_planted_problems_are_dropped(params_factory, tmp_path):
    params = params_factory()
    params = params.model_copy(update={"decontaminate": Decontaminate(ngram=13, min_overlap=0.5, max_share=0.5)})
    gen = setup_generated(params, tmp_path)
    write_jsonl(tmp_path / "gsm8k.jsonl", HANDMADE_GSM8K)
    n = plant(gen, HANDMADE_GSM8K)
    stats = decontaminate.run(with_gsm8k(params, tmp_path / "gsm8k.jsonl"), gen, tmp_path / "clean")
    assert stats["dropped/sft"] == 2 and stats["dropped/practice"] == 0
    kept = read_jsonl(tmp_path / "clean/sft.jsonl")
    assert len(kept) == n and not any(r["id"].startswith("planted") for r in kept)


def test_too_much_contamination_fails_the_stage(params_factory, tmp_path):
    params = params_factory()
    params = params.model_copy(update={"decontaminate": Decontaminate(ngram=13, min_overlap=0.5, max_share=0.01)})
    gen = setup_generated(params, tmp_path)
    write_jsonl(tmp_path / "gsm8k.jsonl", HANDMADE_GSM8K)
    plant(gen, HANDMADE_GSM8K)
    with pytest.raises(RuntimeError, match="max_share"):
        decontaminate.run(with_gsm8k(params, tmp_path / "gsm8k.jsonl"), gen, tmp_path / "clean")


def test_held_out_problems_planted_in_practice_are_caught(params_factory, tmp_path):
    params = params_factory()
    params = params.model_copy(update={"decontaminate": Decontaminate(ngram=13, min_overlap=0.5, max_share=1.0)})
    gen = setup_generated(params, tmp_path)
    test = read_jsonl(gen / "test.jsonl")
    plant(gen, [{"question": r["question"], "answer": r["solution"]} for r in test[:3]], split="practice")
    stats = decontaminate.run(params, gen, tmp_path / "clean")
    assert stats["dropped/practice"] == 3 and stats["dropped/sft"] == 0


@pytest.mark.skipif(not GSM8K_TRAIN.exists(), reason="../shared/data/gsm8k/train.jsonl absent")
def test_real_gsm8k_train_problems_planted(params_factory, tmp_path):
    params = params_factory()
    params = params.model_copy(update={"decontaminate": Decontaminate(ngram=13, min_overlap=0.5, max_share=1.0)})
    gen = setup_generated(params, tmp_path)
    real = read_jsonl(GSM8K_TRAIN)[:200]
    plant(gen, real[100:110])  # planted problems lie inside the first 200 evaluated
    stats = decontaminate.run(with_gsm8k(params, GSM8K_TRAIN, limit=200), gen, tmp_path / "clean")
    assert stats["dropped/sft"] == 10


def test_embedded_copy_is_caught():
    """A benchmark question hidden inside a longer training question is still a copy."""
    index = contamination.EvalIndex(HANDMADE_GSM8K, 13)
    padded = ("Here is a warm-up story about a busy shop on a rainy Tuesday with many customers "
              "waiting in line for a long time. " + HANDMADE_GSM8K[0]["question"] + " Explain carefully.")
    assert index.overlap(padded) == 1.0
    assert index.overlap("Tom has 3 apples and buys 4 more. How many apples does Tom have now?") == 0.0


def test_ngrams_normalise_text():
    a = contamination.ngrams("He paid $1,234. Then he left!", 3)
    b = contamination.ngrams("he PAID 1234 then he left", 3)
    assert a == b
