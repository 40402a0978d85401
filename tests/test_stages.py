"""Each stage's run() on a tiny random Llama: the real code paths, in seconds, with folders only."""

import json
from pathlib import Path
from argparse import Namespace

import pytest
from support import ROOT
import torch

from components import base_model, evaluate, feedback, practice
from tutorloop.config import validate
from tutorloop.data import dedup
from tutorloop.data.jsonl import DataError, read_jsonl, write_jsonl
from tutorloop.eval import stats
from tutorloop.hardware import resolve_runtime
from tutorloop.modeling import chat_prompts, load, resolve_source
from tutorloop.modeling import generate as gen
from tutorloop.runtime.tracking import StageLog
from tutorloop.teachers import generation as generate
from tutorloop.train import preference, sft

pytestmark = pytest.mark.usefixtures("no_tracking")


def resolved(params):
    """The runtime the sft / preference / control stages resolve once and hand down."""
    return resolve_runtime(params.runtime)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("stages")


def test_base_model_from_local_checkpoint(params_factory, workdir):
    params = params_factory()
    out = workdir / "models/base"
    metrics = base_model.main.body(params, Namespace(out=out), StageLog(None))   # the stage, minus argv and MLflow
    assert metrics["parameters"] > 0
    model, tok = load(out)
    assert model.config.vocab_size == len(tok)
    assert (out / "model.safetensors").exists()


def test_base_model_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_source("pkg:surely_not_a_module/x.gguf")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        resolve_source(str(tmp_path / "nope") + "/")
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_source(str(tmp_path / "empty"))
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)


def test_generate_splits_without_overlap(params_factory, workdir, tmp_path):
    params = params_factory()
    counts = generate.generate_dataset(params.generate, workdir / "data", cache_dir=tmp_path / "cache")
    sets = {s: read_jsonl(workdir / "data" / f"{s}.jsonl") for s in generate.SPLITS}
    assert {s: len(v) for s, v in sets.items()} == {"sft": 24, "practice": 6, "test": 8}
    questions = [r["question"] for v in sets.values() for r in v]
    assert len(set(questions)) == len(questions)
    assert counts.get("drop/too_long", 0) == 0
    assert all(len(r["solution"]) <= 1800 and r["id"].startswith(s) for s, v in sets.items() for r in v)
    # held-out = seed problems only; training sets carry the agents' problems, with provenance
    assert {r["provenance"]["agent_path"] for r in sets["test"]} == {"seed"}
    paths = {r["provenance"]["agent_path"].split("/")[0] for r in sets["sft"]}
    assert all(r["provenance"]["params"]["suggest_edit_rounds"] == 2 for r in sets["sft"])
    assert paths == {"seed", "ama", "suggest-edit"}
    assert all(r["provenance"]["seed_id"] and r["provenance"]["model"] for v in sets.values() for r in v)
    on_disk = json.loads((workdir / "data" / "stats.json").read_text())
    assert on_disk["n_sft"] == 24 and counts["seconds"] > 0
    # the cached output holds no timings or replay counts: a second run (journal replayed) writes
    # byte-identical files, so DVC's hash of data/generated does not change
    again = generate.generate_dataset(params.generate, tmp_path / "again", cache_dir=tmp_path / "cache",
                         run_stats=tmp_path / "run.json")
    # a replay takes milliseconds on a fast runner: the timing must be recorded, not be large
    run_stats = json.loads((tmp_path / "run.json").read_text())
    assert again["journal_replayed_seeds"] > 0 and run_stats["problems_per_s"] > 0
    assert 0 < run_stats["seconds"] < counts["seconds"]     # replayed, not generated again
    for name in ("stats.json", *(f"{s}.jsonl" for s in generate.SPLITS)):
        assert (tmp_path / "again" / name).read_bytes() == (workdir / "data" / name).read_bytes(), name


def test_generate_drops_long_solutions(params_factory, tmp_path):
    params = params_factory()
    cfg = params.generate.model_copy(update={"max_answer_chars": 150})
    counts = generate.generate_dataset(cfg, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert counts["drop/too_long"] > 0
    assert all(len(r["solution"]) <= 150 for r in read_jsonl(tmp_path / "out" / "sft.jsonl"))


def test_generate_replays_its_journal_and_is_deterministic(params_factory, tmp_path):
    cfg = params_factory().generate
    first = generate.generate_dataset(cfg, tmp_path / "a", cache_dir=tmp_path / "cache")
    again = generate.generate_dataset(cfg, tmp_path / "b", cache_dir=tmp_path / "cache")
    fresh = generate.generate_dataset(cfg, tmp_path / "c", cache_dir=tmp_path / "other")
    assert first["journal_replayed_seeds"] == 0 and again["journal_replayed_seeds"] >= first["seeds"]
    for split in generate.SPLITS:
        a = (tmp_path / "a" / f"{split}.jsonl").read_text()
        assert a == (tmp_path / "b" / f"{split}.jsonl").read_text() == (tmp_path / "c" / f"{split}.jsonl").read_text()
    assert fresh["journal_replayed_seeds"] == 0


def test_dedup_catches_exact_and_near_copies_but_not_template_mates():
    d = dedup.Dedup(0.8, same_answer=True)
    base = "Tom buys 4 boxes of pencils. Each box has 12 pencils. Tom already had 7 pencils. How many now?"
    assert d.verdict(base, "55") is None
    assert d.verdict(base.upper().replace(".", " ."), "55") == "duplicate"
    assert d.verdict(base.replace("How many now?", "How many pencils now?"), "55") == "near_duplicate"
    # the same story asking for another quantity (AMA) is a different problem
    assert d.verdict(base.replace("How many now?", "How many pencils in the boxes?"), "48") is None
    assert d.verdict(base.replace("4", "6").replace("12", "9").replace("7", "3"), "57") is None
    text_only = dedup.Dedup(0.8)  # generate's setting: the same story is a near-copy whatever it asks
    assert text_only.verdict(base, "55") is None
    assert text_only.verdict(base.replace("How many now?", "How many does he have?"), "48") == "near_duplicate"


def test_batched_generation_is_deterministic_and_ordered(params_factory, workdir):
    params = params_factory()
    model, tok = load(workdir / "models/base")
    qs = ["What is 2+2?", "A much longer question about apples and oranges and pears?", "Hi"]
    prompts = chat_prompts(tok, qs, params.prompt.system, params.prompt.template)
    a = gen(model, tok, prompts, num_return_sequences=3, do_sample=True, temperature=0.7, top_p=0.95,
            max_new_tokens=8, batch_size=2, seed=7)
    b = gen(model, tok, prompts, num_return_sequences=3, do_sample=True, temperature=0.7, top_p=0.95,
            max_new_tokens=8, batch_size=2, seed=7)
    assert a.texts == b.texts and len(a.texts) == 3 and all(len(t) == 3 for t in a.texts)
    assert 0 < a.new_tokens <= 3 * 3 * 8
    # greedy decoding of a prompt is the same alone or in a padded batch
    alone = gen(model, tok, prompts[:1], max_new_tokens=8)
    batched = gen(model, tok, prompts, max_new_tokens=8, batch_size=3)
    assert alone.texts[0] == batched.texts[0]


def test_sft_trains_only_on_the_solution_and_saves_a_plain_checkpoint(params_factory, workdir):
    params = params_factory()
    metrics = sft.train_sft(params, workdir / "models/base", workdir / "data/sft.jsonl",
                      workdir / "models/round-0", runtime=resolved(params))
    assert metrics["examples"] == 24
    out = workdir / "models/round-0"
    assert not (out / "adapter_config.json").exists(), "adapter must be merged"
    merged, _ = load(out)
    base_model_, _ = load(workdir / "models/base")
    changed = any(not torch.equal(p, q) for p, q in zip(merged.state_dict().values(),
                                                        base_model_.state_dict().values()))
    assert changed
    # it learned its data: the completion-only loss on the SFT rows is lower after than before
    rows = read_jsonl(workdir / "data/sft.jsonl")
    trainer = sft.build_trainer(params, base_model_, load(out)[1], rows, workdir / "loss-probe",
                                runtime=resolved(params))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    with torch.no_grad():
        before = base_model_(**batch).loss.item()
        after = merged(**batch).loss.item()
    assert after < before, (before, after)   # a few tiny steps: a small but real decrease


def test_killed_sft_resumes_from_its_last_checkpoint(params_factory, workdir, tmp_path, monkeypatch):
    """A run killed after its 2nd update resumes at step 2 and ends where an unkilled run ends."""
    from transformers import TrainerCallback

    monkeypatch.setenv("TUTORLOOP_TRAIN_DIR", str(tmp_path / "train"))
    raw_sft = dict(params_factory().sft.model_dump(), save_steps=1)
    params = params_factory(sft=raw_sft)

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt("killed")   # after checkpoint-2 is on disk

    base, data = workdir / "models/base", workdir / "data/sft.jsonl"
    with pytest.raises(KeyboardInterrupt):
        sft.train_sft(params, base, data, tmp_path / "killed", callbacks=[Kill()], runtime=resolved(params))
    left = list((tmp_path / "train").glob("sft-*/checkpoint-*"))
    assert [p.name for p in left] == ["checkpoint-2"]
    resumed = sft.train_sft(params, base, data, tmp_path / "resumed", runtime=resolved(params))
    assert resumed["resumed_from_step"] == 2
    assert not list((tmp_path / "train").glob("sft-*"))         # cleaned up after success
    fresh = sft.train_sft(params, base, data, tmp_path / "fresh", runtime=resolved(params))
    assert fresh["resumed_from_step"] == 0
    a, _ = load(tmp_path / "resumed")
    b, _ = load(tmp_path / "fresh")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5), name
    # another knob is another run: never resumed from this one's checkpoints
    other = params_factory(sft=dict(raw_sft, learning_rate=raw_sft["learning_rate"] / 2))
    from tutorloop.train.resume import work_dir
    assert work_dir("sft", other.sft.model_dump(), other.prompt.model_dump(), base, data) != \
        work_dir("sft", params.sft.model_dump(), params.prompt.model_dump(), base, data)


def test_a_fix_to_the_code_a_trainer_computes_with_starts_afresh_not_resumes(tmp_path):
    """The resume key covers the library code: a checkpoint written by older code is never
    continued by newer code (only a file the trainer imports, directly or not, counts)."""
    import shutil

    from tutorloop.train.resume import code_digest, work_dir

    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "tutorloop", copy / "tutorloop", ignore=shutil.ignore_patterns("__pycache__"))
    start = copy / "tutorloop" / "train" / "sft.py"
    before = code_digest(start, copy)
    (copy / "tutorloop" / "serving" / "server.py").write_text("# not imported by the trainer\n")
    assert code_digest(start, copy) == before
    lora = copy / "tutorloop" / "train" / "lora.py"
    lora.write_text(lora.read_text() + "\n# a fix\n")                 # imported by sft.py's trainer
    assert code_digest(start, copy) != before
    modeling = copy / "tutorloop" / "modeling.py"                   # imported transitively (train/lora.py)
    changed = code_digest(start, copy)
    modeling.write_text(modeling.read_text() + "\n# a fix\n")
    assert code_digest(start, copy) != changed
    assert work_dir("sft", {"a": 1}, code=ROOT / "tutorloop/train/sft.py") != work_dir("sft", {"a": 1})


def test_a_kill_during_a_checkpoint_save_resumes_from_the_last_complete_one(params_factory, workdir, tmp_path,
                                                                           monkeypatch):
    """Killed while checkpoint-2 is half written (weights and optimizer on disk, RNG and trainer
    state not): the retry resumes from checkpoint-1, removes the torn one, and ends where an
    unkilled run ends. (Resuming the torn one failed or restarted the schedule at step 2.)"""
    from transformers import Trainer

    from tutorloop.train.resume import COMPLETE

    monkeypatch.setenv("TUTORLOOP_TRAIN_DIR", str(tmp_path / "train"))
    raw_sft = dict(params_factory().sft.model_dump(), save_steps=1)
    params = params_factory(sft=raw_sft)
    real = Trainer._save_rng_state

    def killed_mid_save(self, output_dir):
        if self.state.global_step == 2:
            raise KeyboardInterrupt("SIGKILL mid-save")
        return real(self, output_dir)

    base, data = workdir / "models/base", workdir / "data/sft.jsonl"
    monkeypatch.setattr(Trainer, "_save_rng_state", killed_mid_save)
    with pytest.raises(KeyboardInterrupt):
        sft.train_sft(params, base, data, tmp_path / "killed", runtime=resolved(params))
    monkeypatch.setattr(Trainer, "_save_rng_state", real)
    left = {p.name: (p / COMPLETE).exists() for p in (tmp_path / "train").glob("sft-*/checkpoint-*")}
    assert left == {"checkpoint-1": True, "checkpoint-2": False}
    resumed = sft.train_sft(params, base, data, tmp_path / "resumed", runtime=resolved(params))
    assert resumed["resumed_from_step"] == 1
    fresh = sft.train_sft(params, base, data, tmp_path / "fresh", runtime=resolved(params))
    a, _ = load(tmp_path / "resumed")
    b, _ = load(tmp_path / "fresh")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert fresh["resumed_from_step"] == 0


def test_sft_completion_only_labels(params_factory, workdir, tmp_path):
    """The stage's own trainer masks the prompt: exactly the solution (and its end token) carry loss."""
    params = params_factory()
    model, tok = load(workdir / "models/base")
    rows = read_jsonl(workdir / "data/sft.jsonl")[:2]
    trainer = sft.build_trainer(params, model, tok, rows, tmp_path, runtime=resolved(params))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for row, ids, labels in zip(rows, batch["input_ids"], batch["labels"]):
        kept = tok.decode(ids[labels != -100])
        assert kept.replace("<|im_end|>", "").strip() == row["solution"]
        assert "<|im_end|>" in kept  # the student learns to stop


def test_practice_feedback_dpo_round(params_factory, workdir, tmp_path):
    params = params_factory()
    rnd = workdir / "data/round-1"
    m = practice.run(params, "1", workdir / "models/round-0", workdir / "data/practice.jsonl", rnd)
    samples = read_jsonl(rnd / "samples.jsonl")
    assert m["samples"] == len(samples) == 6 * 2
    stats = feedback.run(params.feedback, workdir / "data/practice.jsonl", rnd)
    assert stats["pairs"] == len(read_jsonl(rnd / "pairs.jsonl")) > 0
    assert len(read_jsonl(rnd / "feedback.jsonl")) == 12
    labels = [r["correct"] for r in read_jsonl(rnd / "feedback.jsonl")]
    # 2 samples per problem: pass@1 is the pass rate, pass@4 cannot be estimated from 2
    assert stats["practice_pass_at_1"] == pytest.approx(sum(labels) / 12) and "practice_pass_at_4" not in stats
    assert len(read_jsonl(rnd / "unpaired.jsonl")) == stats["unpaired_desirable"] + stats["unpaired_undesirable"]
    metrics = preference.train_preference(params, "1", workdir / "models/round-0", rnd, workdir / "models/round-1",
                                         runtime=resolved(params))
    assert metrics["pairs"] == stats["pairs"] and "reward_accuracy" in metrics
    assert not (workdir / "models/round-1/adapter_config.json").exists()
    load(workdir / "models/round-1")
    # KTO on the same round's table, against the SFT model as an explicit reference
    raw = params.model_dump(by_alias=True)
    raw["rounds"]["2"] = {"prev": "1", "practice": raw["rounds"]["1"]["practice"],
                          "preference": {**raw["rounds"]["1"]["preference"], "method": "kto", "reference": "sft"}}
    raw["checkpoints"]["2"] = "models/round-2"
    kto_params = validate(raw)
    metrics = preference.train_preference(kto_params, "2", workdir / "models/round-1", rnd, workdir / "models/round-2",
                                         sft_model=workdir / "models/round-0", runtime=resolved(kto_params))
    assert metrics["method_kto"] == 1 and metrics["reference_sft"] == 1
    assert metrics["desirable_weight"] * metrics["desirable"] == pytest.approx(
        metrics["undesirable_weight"] * (metrics["examples"] - metrics["desirable"]))
    load(workdir / "models/round-2")
    # RFT on the same round: the feedback stage wrote its table; trained from the SFT model (ReST-EM)
    rft_rows = read_jsonl(rnd / "rft.jsonl")
    assert sum(r["source"] == "teacher" for r in rft_rows) == 6 and stats["rft_rows"] == len(rft_rows)
    raw["rounds"]["2"]["preference"] = {**raw["rounds"]["1"]["preference"], "method": "rft", "start": "sft"}
    rft_params = validate(raw)
    metrics = preference.train_preference(rft_params, "2", workdir / "models/round-1", rnd, tmp_path / "rft-2",
                                         sft_model=workdir / "models/round-0", runtime=resolved(rft_params))
    assert metrics["method_rft"] == 1 and metrics["start_sft"] == 1 and metrics["reference_sft"] == 0
    assert metrics["examples"] == len(rft_rows) and metrics["student_solutions"] == stats["rft_student_solutions"]
    # it trained from round 0, not round 1: closer to round 0's weights than round 1 is
    rft, r0, r1 = (load(d)[0].state_dict() for d in (tmp_path / "rft-2", workdir / "models/round-0",
                                                     workdir / "models/round-1"))
    dist = lambda a, b: sum(float((a[k] - b[k]).abs().sum()) for k in a)  # noqa: E731
    assert dist(rft, r0) < dist(r1, r0)
    # the control (rft_rows: teacher): the same round on the teacher's solutions alone
    raw["rounds"]["2"]["preference"]["rft_rows"] = "teacher"
    metrics = preference.train_preference(validate(raw), "2", workdir / "models/round-1", rnd, tmp_path / "rft-2t",
                                         sft_model=workdir / "models/round-0", runtime=resolved(validate(raw)))
    assert metrics["examples"] == 6 and metrics["student_solutions"] == 0
    # control@2 of the RFT round (both sources): as many rows and updates as the round, all the
    # teacher's, from the round's own start (the SFT model here)
    raw["rounds"]["2"]["preference"]["rft_rows"] = "both"
    metrics = preference.train_preference(validate(raw), "2", workdir / "models/round-1", rnd, tmp_path / "control-2",
                                         sft_model=workdir / "models/round-0", control=True, runtime=resolved(validate(raw)))
    assert metrics["control"] == 1 and metrics["examples"] == len(rft_rows) and metrics["student_solutions"] == 0
    assert metrics["start_sft"] == 1 and metrics["reference_sft"] == 0
    # control@1 of the DPO round: a supervised pass on the teacher's solutions, one row per pair
    metrics = preference.train_preference(params, "1", workdir / "models/round-0", rnd, tmp_path / "control-1",
                                         control=True, runtime=resolved(params))
    assert metrics["control"] == 1 and metrics["examples"] == stats["pairs"] and "reward_accuracy" not in metrics
    load(tmp_path / "control-1")
    with pytest.raises(Exception, match="start"):
        validate({**raw, "rounds": {**raw["rounds"], "2": {**raw["rounds"]["2"], "preference": {
            **raw["rounds"]["1"]["preference"], "method": "dpo", "start": "sft"}}}})


def test_practice_sources_fresh_sft_and_frontier(params_factory, workdir, tmp_path):
    """rounds.N.practice.source: sft practises on the SFT problems (and feedback judges against
    what was practised), frontier keeps only problems right in some but not all samples."""
    raw = params_factory().model_dump(by_alias=True)
    raw["rounds"]["1"]["practice"]["source"] = "sft"
    sft_problems = read_jsonl(workdir / "data/sft.jsonl")
    m = practice.run(validate(raw), "1", workdir / "models/round-0", workdir / "data/practice.jsonl",
                     tmp_path / "sft", sft_file=workdir / "data/sft.jsonl")
    practised = read_jsonl(tmp_path / "sft" / "problems.jsonl")
    assert m["source"] == "sft" and [p["id"] for p in practised] == [p["id"] for p in sft_problems[:len(practised)]]
    assert {s["problem_id"] for s in read_jsonl(tmp_path / "sft" / "samples.jsonl")} == {p["id"] for p in practised}
    assert feedback.run(validate(raw).feedback, tmp_path / "sft" / "problems.jsonl", tmp_path / "sft")["problems"] == len(practised)
    # frontier: graded like feedback; p1 is right in 1 of 2 samples, p0 in none, p2 in both
    problems = [{"id": f"p{i}", "question": "q", "solution": "s", "answer": str(i + 5)} for i in range(3)]
    rows = [{"problem_id": f"p{i}", "sample": k, "completion": f"#### {i + 5 if (i, k) in {(1, 0), (2, 0), (2, 1)} else 0}"}
            for i in range(3) for k in range(2)]
    from tutorloop.eval.feedback import judge
    from tutorloop.eval.signal import frontier

    assert frontier(problems, judge(problems, rows)) == {"p1"}
    # select: signal draws `limit` problems by the history beside the practice set (the draw's
    # statistics are tests/test_signal.py's): the stage reads that file and draws as the library does
    from tutorloop.eval.signal import add_round, empty_history, round_problems

    fresh = read_jsonl(workdir / "data/practice.jsonl")
    seen = [{"id": fresh[0]["id"]}] + [{"id": p["id"]} for p in fresh[1:]]
    verdicts = [{"problem_id": p["id"], "correct": i == 0 and k % 2 == 0, "completion": "#### 1"}
                for i, p in enumerate(seen) for k in range(8)]
    (tmp_path / "sets").mkdir()
    write_jsonl(tmp_path / "sets/after-0.jsonl", fresh)
    history = add_round(empty_history(), seen, verdicts)
    (tmp_path / "sets/after-0.history.json").write_text(json.dumps(history))
    raw["rounds"]["1"]["practice"].update(source="fresh", select="signal")
    raw["practice"]["limit"] = 2
    params = validate(raw)
    m = practice.run(params, "1", workdir / "models/round-0", tmp_path / "sets/after-0.jsonl", tmp_path / "sig")
    assert m["select"] == "signal" and m["history_samples"] == 8 * len(fresh) and m["problems"] == 2
    want, _ = round_problems(fresh, 0, 2, "signal", history, params.rounds["1"].practice.seed, 2)
    assert read_jsonl(tmp_path / "sig/problems.jsonl") == want
    raw["practice"]["limit"] = 0
    # the tiny random student is never right: an empty frontier is an error naming the key
    raw["rounds"]["1"]["practice"]["source"] = "frontier"
    with pytest.raises(Exception, match="rounds.1.practice.source: frontier"):
        practice.run(validate(raw), "1", workdir / "models/round-0", workdir / "data/practice.jsonl", tmp_path / "fr")


def test_fresh_adapter_disabled_is_exactly_the_previous_round(params_factory, workdir):
    """The reference of round r is round r-1 itself: with the fresh adapter disabled (what TRL
    uses when ref_model=None) the policy's logits equal the saved r-1 model's, before and after
    training moves the adapter."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from tutorloop.train.lora import lora_config

    params = params_factory()
    prev, tok = load(workdir / "models/round-0")
    ref, _ = load(workdir / "models/round-0")
    rows = [{"question": "What is 2+3?", "chosen": "2+3 = <<2+3=5>>5\n#### 5", "rejected": "#### 6"}] * 4
    args = DPOConfig(output_dir=str(workdir / "dpo-tmp"), per_device_train_batch_size=2, max_steps=3,
                     learning_rate=5e-3, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
                     activation_checkpointing=False, dataset_num_proc=1, logging_steps=1)
    trainer = DPOTrainer(model=prev, ref_model=None, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list(preference.to_preference(rows, params.prompt)),
                         peft_config=lora_config(params.preference.lora))
    ids = tok("What is 2+3? The answer is 5", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = ref(ids).logits
        with trainer.model.disable_adapter():
            assert torch.equal(trainer.model(ids).logits, want)
    trainer.train()
    with torch.no_grad():
        with trainer.model.disable_adapter():
            assert torch.equal(trainer.model(ids).logits, want)
        assert not torch.equal(trainer.model(ids).logits, want)  # the adapter did learn


def test_kto_class_weights_balance_the_classes():
    rows = [{"label": True}] * 9 + [{"label": False}] * 3
    assert preference.class_weights(rows) == (1.0, 3.0)
    assert preference.class_weights([{"label": True}] + [{"label": False}] * 4) == (4.0, 1.0)
    with pytest.raises(ValueError, match="both classes"):
        preference.class_weights([{"label": True}] * 3)


def test_evaluate_writes_metrics_and_predictions(params_factory, workdir):
    params = params_factory()
    metrics = evaluate.run(params, workdir / "models/round-0", workdir / "data/test.jsonl",
                           workdir / "metrics/0.json", workdir / "eval/0")
    from tutorloop.eval.grading import grade

    on_disk = json.loads((workdir / "metrics/0.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    test = read_jsonl(workdir / "data/test.jsonl")
    preds = read_jsonl(workdir / "eval/0/predictions.jsonl")
    assert [p["id"] for p in preds] == [r["id"] for r in test] and on_disk["n"] == 8
    # the metrics are what the per-problem verdicts say, and each verdict is the grader's
    for p, r in zip(preds, test):
        g = grade(p["completion"], r["answer"])
        assert (p["correct"], p["strict_correct"], p["extracted"]) == (g.correct, g.strict, g.extracted)
    assert on_disk["correct"] == sum(p["correct"] for p in preds)
    assert on_disk["accuracy"] == on_disk["correct"] / 8
    assert on_disk["strict_accuracy"] == sum(p["strict_correct"] for p in preds) / 8 <= on_disk["accuracy"]
    assert (on_disk["ci95_low"], on_disk["ci95_high"]) == stats.wilson(on_disk["correct"], 8)
    fams = {r["family"] for r in test}
    assert set(on_disk["family"]) == fams
    # params point at ../shared's GSM8K file (limit 4): evaluated exactly when the file is there
    from conftest import GSM8K_TRAIN

    assert ("gsm8k" in metrics) == GSM8K_TRAIN.exists()
    if GSM8K_TRAIN.exists():
        assert metrics["gsm8k"]["n"] == 4 and len(read_jsonl(workdir / "eval/0/gsm8k_predictions.jsonl")) == 4


def test_bad_inputs_are_clear_errors(params_factory, tmp_path, workdir):
    params = params_factory()
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no records"):
        evaluate.run(params, workdir / "models/round-0", tmp_path / "empty.jsonl", tmp_path / "m.json",
                     tmp_path / "e")
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "question": "q", "answer": "1"}\n{not json\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        evaluate.run(params, tmp_path / "no-model", workdir / "data/test.jsonl", tmp_path / "m.json",
                     tmp_path / "e")
    write_jsonl(tmp_path / "pairs.jsonl", [{"question": "q"}])
    with pytest.raises(DataError, match="missing field"):
        preference.train_preference(params, "1", workdir / "models/round-0", tmp_path, tmp_path / "out",
                                    runtime=resolved(params))


def test_a_checkpoint_is_written_whole_or_not_at_all(tiny_model_dir, tmp_path):
    """modeling.save writes a temporary sibling and renames it: a save that dies half way leaves
    the folder a reader (`tutorloop serve --model models/round-N`) had, and no debris."""
    from tutorloop import modeling

    model, tok = modeling.load(tiny_model_dir)
    out = tmp_path / "models" / "round-1"
    modeling.save(model, tok, out)
    before = (out / "model.safetensors").read_bytes()

    class Dies:
        def save_pretrained(self, path):
            (Path(path) / "tokenizer.json").write_text("{half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        modeling.save(model, Dies(), out)
    assert (out / "model.safetensors").read_bytes() == before and "{half" not in (out / "tokenizer.json").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["round-1"]     # no temporary folder left
    modeling.load(out)                                                      # still a whole checkpoint
