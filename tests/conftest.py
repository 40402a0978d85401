"""Shared fixtures: a tiny random Llama student built in the test (no downloads), params.

The tiny model has a real BPE tokenizer trained here on procedural problems and SmolLM2's chat
template, so every code path (chat prompts, completion-only loss, generation, merge, save) is the
one the real student takes — only the sizes differ.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from support import ROOT

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub

SHARED = ROOT.parent / "shared"
GSM8K_TRAIN = SHARED / "data" / "gsm8k" / "train.jsonl"
ASDIV = SHARED / "data" / "asdiv" / "asdiv.jsonl"   # CC BY-NC 4.0: read from ../shared, never committed

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(out: Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tutorloop.teachers import ProceduralTeacher

    texts = []
    for r in ProceduralTeacher().problems(300, seed=123):
        texts += [r["question"], r["solution"]]
    texts.append("You are a careful math tutor. Solve the problem step by step, then give the final answer.")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def pytest_collection_modifyitems(config, items):
    """`integration` tests (tests/integration: a real llama.cpp server, minutes) run only when a
    -m expression names them (`make test-integration`); `make test` and `-m "not slow"` skip them."""
    if "integration" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="integration: run with `make test-integration` (pytest -m integration -s)")
    for item in items:
        if item.get_closest_marker("integration"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def tiny_params(model_source: str | Path, rounds: int = 1) -> dict:
    """A complete, valid params dict sized for seconds, not minutes."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["runtime"] = {**raw["runtime"], "threads": 1, "device": "cpu", "precision": "float32"}
    raw["base_model"] = {"source": str(model_source), "dtype": "float32"}
    raw["generate"].update(n_sft=24, n_practice=6, n_test=8)
    raw["sft"].update(epochs=1, batch_size=8, grad_accum=1, max_length=256, logging_steps=1,
                      lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    raw["practice"].update(batch_size=8, max_new_tokens=16)
    raw["preference"].update(batch_size=4, grad_accum=1, max_length=256, logging_steps=1,
                      lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    raw["evaluate"].update(batch_size=8, max_new_tokens=16,
                           # '' where ../shared is absent: a set path that does not exist is an error
                           gsm8k={"path": str(GSM8K_TRAIN) if GSM8K_TRAIN.exists() else "", "dataset": "", "subset": "main",
                                  "split": "test", "limit": 4})
    raw["rounds"] = {str(r): {"prev": str(r - 1),
                              "practice": {"samples": 2, "temperature": 0.7, "top_p": 0.95, "seed": r},
                              "preference": {"method": "dpo", "beta": 0.1, "learning_rate": 1e-4, "epochs": 1,
                                      "seed": r}}
                     for r in range(1, rounds + 1)}
    raw["controls"] = {}   # a test that wants control@k adds it (and its checkpoint)
    raw["checkpoints"] = {"base": "models/base", "0": "models/round-0",
                          **{str(r): f"models/round-{r}" for r in range(1, rounds + 1)}}
    return raw


@pytest.fixture
def params_factory(tiny_model_dir):
    from tutorloop.config import validate

    def make(**overrides):
        raw = tiny_params(tiny_model_dir, rounds=overrides.pop("rounds", 1))
        for key, value in overrides.items():
            raw[key] = value
        return validate(raw)

    return make


@pytest.fixture
def no_tracking(monkeypatch):
    monkeypatch.setenv("TUTORLOOP_TRACKING", "off")


@pytest.fixture
def tracked_cwd(tmp_path, monkeypatch):
    """tmp_path as the cwd of a stage run by hand or by `dvc exp run`: tracking on, no parent run,
    the default store (tmp_path/mlflow.db, created by the first stage run). MLflow's process-wide
    tracking URI (ensure_store sets and exports it) is unset afterwards, so it never points a later
    test at this store."""
    import mlflow

    from tutorloop.runtime import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUTORLOOP_TRACKING", "on")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", tracking.PARENT_ENV):
        monkeypatch.delenv(var, raising=False)
    yield tmp_path
    mlflow.set_tracking_uri(None)   # then monkeypatch puts MLFLOW_TRACKING_URI back as it was


def copy_project(dest: Path) -> Path:
    """The pipeline's files (code, dvc.yaml) in a fresh folder: what a clone holds."""
    for name in ("components", "tutorloop", "flows", "dvc.yaml", "prefect.toml", ".gitignore", ".dvcignore"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest
