"""params.yaml validation: every problem reported at once, each with its key and bad value."""

import copy

import pytest
import yaml
from support import ROOT

from tutorloop.config import ConfigError, Params, load_params, validate


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def errors_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    return str(info.value)


def test_repo_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.rounds["1"].practice.samples == 4  # Orca-Math K
    assert params.rounds["1"].practice.temperature == 0.7
    assert params.rounds["1"].practice.top_p == 0.95
    assert params.generate.max_answer_chars == 1800


def test_every_yaml_in_the_repo_loads():
    """torchtune-style: a YAML that does not parse (or a params file that does not validate) fails here."""
    files = [p for p in ROOT.rglob("*.y*ml") if ".venv" not in p.parts and ".dvc" not in p.parts
             and "site-packages" not in p.parts]
    assert {"params.yaml", "dvc.yaml", "prefect.yaml"} <= {p.name for p in files}
    for path in files:
        data = yaml.safe_load(path.read_text())
        assert data, f"{path} is empty"
        if path.name == "params.yaml":
            validate(data)


def test_dvc_yaml_lists_each_stage_source_and_existing_params():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    raw = raw_params()
    for name, stage in dvc.items():
        body = stage.get("do", stage)
        deps = body.get("deps", [])
        assert f"components/{name}.py" in deps, f"{name} must depend on its own source"
        keys = body.get("params", [])
        for key in keys:
            for round_key in (raw["rounds"] if "${key}" in key else [None]):
                node = raw
                for part in key.replace("${key}", str(round_key)).split("."):
                    assert isinstance(node, dict) and part in node, f"{name}: params key {key} not in params.yaml"
                    node = node[part]


def test_dvc_yaml_lists_the_library_each_stage_computes_with():
    """Each stage's `tutorloop/...` deps are what its import graph says (tutorloop/runtime/deps.py:
    modules imported transitively, files they read beside themselves, a folder where it uses all
    of one, plumbing left out); tests/test_layout.py checks that no stage imports another."""
    from typer.testing import CliRunner

    from tutorloop.cli import app
    from tutorloop.runtime.deps import WRITE_COMMAND

    result = CliRunner().invoke(app, ["deps", "--check", "--project", str(ROOT)])
    assert result.exit_code == 0, f"dvc.yaml's deps are stale, run `{WRITE_COMMAND}`:\n{result.output}"


def test_deps_write_puts_a_deleted_line_back_and_drops_an_unused_one():
    from tutorloop.runtime.deps import rewrite, stale

    text = (ROOT / "dvc.yaml").read_text()
    assert rewrite(ROOT, text) == text
    edited = text.replace("      - tutorloop/llm\n", "", 1).replace(
        "      - tutorloop/train/sft.py\n", "      - tutorloop/train/sft.py\n      - tutorloop/serving/server.py\n", 1)
    assert stale(ROOT, edited) == ["generate: missing tutorloop/llm", "sft: not used tutorloop/serving/server.py"]
    assert rewrite(ROOT, edited) == text
    # a folder used whole is written as the folder, unless dvc.yaml already spells it file by file
    lines = text.splitlines(keepends=True)
    start = lines.index("  preference:\n")
    body = lines[start:next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  control:"))]
    no_train = "".join(ln for ln in body if "- tutorloop/train/" not in ln)
    assert "        - tutorloop/train\n" in rewrite(ROOT, "stages:\n" + no_train)


def test_unknown_key_wrong_type_and_impossible_values_all_reported():
    raw = raw_params()
    raw["sft"]["learning_rat"] = 1e-3                      # typo
    raw["sft"]["learning_rate"] = -1.0                     # impossible
    raw["rounds"]["1"]["practice"]["samples"] = 0          # K=0
    raw["generate"]["n_test"] = "many"                     # wrong type
    msg = errors_of(raw)
    assert "sft.learning_rat: 0.001" in msg
    assert "sft.learning_rate: -1.0" in msg
    assert "rounds.1.practice.samples: 0" in msg
    assert "generate.n_test: 'many'" in msg


def test_several_training_processes_need_the_launcher_and_a_batch_they_can_split():
    raw = raw_params()
    raw["training"].update(processes=2)
    assert "training.launcher: 'none' -> 2 training processes need launcher: accelerate" in errors_of(raw)
    raw["training"].update(launcher="accelerate")
    validate(raw)                                  # sft 8 x 2 and preference 4 x 2 split over 2
    raw["training"].update(processes=3)
    problems = errors_of(raw)
    assert "training.processes: 3 -> sft's global batch (sft.batch_size 8 x grad_accum 2)" in problems
    assert "preference's global batch (preference.batch_size 4 x grad_accum 2)" in problems


def test_each_rank_takes_its_share_of_the_global_batch():
    from tutorloop.train.batching import split_over

    assert split_over(8, 2, 1) == (8, 2)
    assert split_over(8, 2, 2) == (8, 1)           # the accumulation is split first
    assert split_over(8, 1, 2) == (4, 1)           # else the batch
    with pytest.raises(ConfigError, match="cannot be split over 3 processes"):
        split_over(8, 2, 3)


def test_round_referring_to_missing_round():
    raw = raw_params()
    raw["rounds"]["2"]["prev"] = "5"
    assert "rounds.2.prev: '5'" in errors_of(raw)


def test_round_cannot_start_from_a_later_round():
    raw = raw_params()
    raw["rounds"]["1"]["prev"] = "2"
    assert "rounds.1.prev: '2'" in errors_of(raw)


def test_practice_offset_is_checked_against_the_set_the_round_practises_on():
    raw = raw_params()
    n_practice, n_sft = raw["generate"]["n_practice"], raw["generate"]["n_sft"]
    raw["rounds"]["2"]["practice"]["offset"] = n_practice
    assert f"rounds.2.practice.offset: {n_practice} -> past the practice set" in errors_of(raw)
    # practising on the SFT problems: the offset indexes those (more of them than practice ones)
    raw["rounds"]["2"]["practice"]["source"] = "sft"
    validate(raw)
    raw["rounds"]["2"]["practice"]["offset"] = n_sft
    assert f"rounds.2.practice.offset: {n_sft} -> past the SFT set (generate.n_sft: {n_sft})" in errors_of(raw)


def test_rft_rows_and_weight_belong_to_rft_rounds():
    raw = raw_params()
    raw["rounds"]["1"]["preference"]["rft_rows"] = "teacher"
    assert "rounds.1.preference.rft_rows: 'teacher' -> not a key of method 'dpo' (dpo takes: " in errors_of(raw)
    raw["rounds"]["1"]["preference"]["method"] = "rft"
    assert validate(raw).rounds["1"].preference.rft_rows == "teacher"
    raw["rounds"]["1"]["preference"]["rft_rows"] = "all"
    assert "rounds.1.preference.rft_rows" in errors_of(raw)
    raw["rounds"]["1"]["preference"].update(rft_rows="both", rft_weight="failures")
    assert validate(raw).rounds["1"].preference.rft_weight == "failures"
    raw["rounds"]["1"]["preference"]["rft_weight"] = "signal"
    assert "rounds.1.preference.rft_weight: 'signal'" in errors_of(raw)


def test_each_method_takes_only_its_own_keys():
    """One model per method: a key of another method is an error naming the key and the method
    (not pydantic's tagged-union key `rounds.1.preference.kto.sft_weight`), every one reported."""
    from tutorloop.config import DpoRound, KtoRound, RftRound

    raw = raw_params()
    raw["rounds"]["1"]["preference"].update(method="kto", sft_weight=1.0)
    raw["rounds"]["2"]["preference"].update(method="rft", reference="sft", beta=0.2, start="sft")
    msg = errors_of(raw)
    assert ("rounds.1.preference.sft_weight: 1.0 -> not a key of method 'kto' "
            "(kto takes: method, learning_rate, epochs, seed, reference, beta)") in msg
    assert "rounds.2.preference.reference: 'sft' -> not a key of method 'rft'" in msg
    assert "rounds.2.preference.beta: 0.2 -> not a key of method 'rft'" in msg
    assert ".kto." not in msg and ".rft." not in msg and "rounds.2.preference.start" not in msg
    raw = raw_params()
    raw["rounds"]["1"]["preference"].update(method="ppo")
    raw["rounds"]["2"]["preference"]["beta"] = -0.1
    msg = errors_of(raw)
    assert "rounds.1.preference.method: 'ppo' -> must be one of 'dpo', 'kto', 'rft'" in msg
    assert "rounds.2.preference.beta: -0.1 -> Input should be greater than 0" in msg
    # no method: dpo, as before the union
    raw = raw_params()
    del raw["rounds"]["1"]["preference"]["method"]
    assert isinstance(validate(raw).rounds["1"].preference, DpoRound)
    assert set(DpoRound.model_fields) - set(KtoRound.model_fields) == {"sft_weight"}
    assert not {"reference", "beta", "sft_weight"} & set(RftRound.model_fields)


@pytest.mark.parametrize("method", ["dpo", "kto", "rft"])
def test_a_method_switch_by_dvc_set_validates(method):
    """`dvc exp run -S rounds.N.preference.method=...` cannot delete keys: another method's keys
    left at their defaults are inert and let through (on params.yaml and on every recipe)."""
    from tutorloop.config.recipes import RECIPES, apply_overrides, complete, recipe_overrides

    for recipe in [None] + sorted(p.stem for p in RECIPES.glob("*.yaml")):
        raw = apply_overrides(raw_params(), complete(raw_params(), recipe_overrides(recipe)) if recipe else {})
        if recipe == "gsm8k" and method != "dpo":   # its RPO term is DPO's: set back with -S too
            raw = apply_overrides(raw, {f"rounds.{k}.preference.sft_weight": 0.0 for k in raw["rounds"]})
        switched = apply_overrides(raw, {f"rounds.{k}.preference.method": method for k in raw["rounds"]})
        params = validate(switched)
        assert {r.preference.method for r in params.rounds.values()} == {method}, recipe


def _schema_default(info):
    """A field's default (its factory's value), or None where the field is required."""
    from pydantic_core import PydanticUndefined

    if info.default is not PydanticUndefined:
        return info.default
    return info.default_factory() if info.default_factory is not None else None


def _agree(default, value) -> bool:
    # 1 and 1.0 agree (YAML writes epochs: 1 for a float field); True and 1 do not
    return isinstance(default, bool) == isinstance(value, bool) and default == value


def test_schema_defaults_are_params_yaml_values():
    """One source of defaults: wherever params.yaml sets a key whose field has a default, the two
    agree, so the schema never tells a different story (change one side only and this fails)."""
    from pydantic import BaseModel

    from tutorloop.config import METHOD_ROUNDS, Round
    from tutorloop.config.schema import _method_of

    checked, wrong = [], []

    def walk(node: dict, model: type[BaseModel], path: str) -> None:
        for key, value in node.items():
            name = "register_" if model is Params and key == "register" else key
            info = model.model_fields[name]
            sub = info.annotation
            if model is Round and key == "preference":   # the union: the round's method's model
                sub = METHOD_ROUNDS[_method_of(value)]
            elif model is Params and key == "rounds":
                for rkey, rnd in value.items():
                    walk(rnd, Round, f"rounds.{rkey}.")
                continue
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                walk(value, sub, f"{path}{key}.")
                continue
            default = _schema_default(info)
            if default is None or model is Params and key == "checkpoints":
                continue
            checked.append(path + key)
            if not _agree(default, value):
                wrong.append(f"{path}{key}: schema {default!r}, params.yaml {value!r}")

    walk(raw_params(), Params, "")
    assert not wrong, wrong
    # the walk reached every section, the rounds' methods and both adapters
    assert {"sft.lora.r", "preference.lora.r", "evaluate.gsm8k.limit", "practice.server.timeout",
            "rounds.2.preference.beta", "rounds.1.practice.offset", "register.alpha"} <= set(checked)
    assert len(checked) > 120


def test_checkpoints_must_match_rounds():
    raw = raw_params()
    del raw["checkpoints"]["2"]
    assert "checkpoints" in errors_of(raw)


def test_unquoted_integer_round_keys_are_caught():
    raw = raw_params()
    raw["rounds"] = {1: copy.deepcopy(raw["rounds"]["1"])}
    raw["checkpoints"] = {"base": "models/base", "0": "models/round-0", 1: "models/round-1"}
    # pydantic coerces nothing here: the dict key must be a string, as DVC needs it quoted
    assert "rounds.1" in errors_of(raw)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "params.yaml")


def test_cli_validate_reports_errors(tmp_path):
    from typer.testing import CliRunner

    from tutorloop.cli import app

    raw = raw_params()
    raw["rounds"]["1"]["preference"]["beta"] = -0.1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", "--project", str(tmp_path)])
    assert result.exit_code == 2
    assert "rounds.1.preference.beta: -0.1" in result.output


def test_teacher_and_seed_cross_checks():
    raw = raw_params()
    raw["generate"]["seeds"] = {"source": "jsonl", "path": ""}
    raw["generate"]["teacher"]["api_key_env"] = "sk-pasted-a-key-here!"
    msg = errors_of(raw)
    assert "generate.seeds.source: 'jsonl'" in msg and "procedural teacher" in msg
    assert "generate.seeds.path" in msg
    assert "generate.teacher.api_key_env" in msg and "NAME of the environment variable" not in msg
    assert "sk-pasted-a-key-here!" not in msg and "pasted" not in msg  # the key itself is never echoed
    raw = raw_params()
    raw["feedback"]["judge"] = "http://tutor:hunter2-token@judge.internal/v1"  # a URL where a section goes
    msg = errors_of(raw)
    assert "feedback.judge: 'http://***@judge.internal/v1'" in msg and "hunter2" not in msg
    raw = raw_params()
    raw["generate"]["teacher"].update(kind="openai", model="")
    raw["generate"]["seeds"] = {"source": "jsonl", "path": raw["evaluate"]["gsm8k"]["path"], "offset": 10}
    msg = errors_of(raw)
    assert "generate.teacher.model: ''" in msg
    assert "generate.seeds.offset: 10" in msg and "evaluate.gsm8k" in msg
    raw["generate"]["teacher"]["model"] = "gpt-4o"
    raw["generate"]["seeds"]["offset"] = raw["evaluate"]["gsm8k"]["limit"]
    assert validate(raw).generate.teacher.model == "gpt-4o"


def test_every_recipe_applies_to_params_yaml_and_validates():
    from tutorloop.config.recipes import RECIPES, apply_overrides, complete, recipe_overrides

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert recipes, "recipes/ holds at least the GSM8K recipe"
    for path in recipes:
        overrides = complete(raw, recipe_overrides(path.stem))
        params = validate(apply_overrides(raw, overrides))
        for key, value in overrides.items():   # every override lands on a real knob
            node = params.model_dump(by_alias=True)
            for part in key.split("."):
                node = node[part]
            assert node == value, key
    gsm = validate(apply_overrides(raw, complete(raw, recipe_overrides("gsm8k"))))
    assert gsm.generate.teacher.kind == "dataset" and gsm.generate.n_test >= 500
    assert gsm.evaluate.calculator and gsm.practice.calculator


def test_every_knob_has_a_description():
    """Each field of each section says what it does (the top-level sections are documented in
    params.yaml's comments and their own classes)."""
    import inspect

    from tutorloop.config import schema as config

    missing = [f"{name}.{field}" for name, cls in inspect.getmembers(config, inspect.isclass)
               if issubclass(cls, config.Section) and cls not in (config.Section, config.Params)
               for field, info in cls.model_fields.items() if not info.description]
    assert not missing, missing


def test_batch_sizes_may_be_auto():
    raw = raw_params()
    for section in ("practice", "evaluate", "sft", "preference"):
        raw[section]["batch_size"] = "auto"
    params = validate(raw)
    assert {params.practice.batch_size, params.evaluate.batch_size, params.sft.batch_size,
            params.preference.batch_size} == {"auto"}
    raw["sft"]["batch_size"] = 16
    assert validate(raw).sft.batch_size == 16


def test_a_server_backend_needs_a_url_and_cannot_run_the_calculator():
    raw = raw_params()
    raw["practice"].update(backend="openai", calculator=True)
    raw["evaluate"].update(backend="openai", server={"base_url": "http://tutor:hunter2-token@gpu-box:8000/v1"})
    msg = errors_of(raw)
    assert "practice.server.base_url: '' -> required for practice.backend: openai" in msg
    assert "practice.calculator: True -> the calculator runs inside the local engine" in msg
    assert "evaluate.server.base_url" not in msg and "hunter2" not in msg
    raw["practice"].update(calculator=False, server={"base_url": "http://localhost:8000/v1"})
    params = validate(raw)
    assert params.practice.server.api_key_env == "VLLM_API_KEY" and params.evaluate.server.n is True
    # the GSM8K recipe turns the calculator on: with a server backend that is one clear problem
    from tutorloop.config.recipes import apply_overrides, complete, recipe_overrides

    gsm = apply_overrides(raw_params(), complete(raw_params(), recipe_overrides("gsm8k")))
    gsm["evaluate"].update(backend="openai", server={"base_url": "http://localhost:8000/v1"})
    assert "evaluate.calculator: True" in errors_of(gsm)
    raw = raw_params()
    raw["evaluate"]["server"] = {"base_url": "http://x/v1", "api_key_env": "sk-pasted-key-123456"}
    msg = errors_of(raw)
    assert "evaluate.server.api_key_env" in msg and "sk-pasted-key-123456" not in msg


def test_keys_of_an_older_params_yaml_say_where_they_went():
    raw = raw_params()
    raw["dpo"] = raw.pop("preference")
    raw["rounds"]["1"]["dpo"] = raw["rounds"]["1"].pop("preference")
    raw["practice"]["dtype"] = "bfloat16"
    raw["feedback"]["judge"]["dtype"] = "bfloat16"
    msg = errors_of(raw)
    assert "dpo: ... -> renamed to `preference`" in msg and "rounds.1.dpo: ... -> renamed to rounds.1.preference" in msg
    assert "practice.dtype: 'bfloat16' -> replaced by runtime.precision" in msg
    assert "feedback.judge.dtype: 'bfloat16' -> replaced by runtime.precision" in msg


def test_a_recipe_that_adds_a_control_gets_its_checkpoint_derived_not_typed():
    from tutorloop.config.recipes import apply_overrides, complete, recipe_overrides

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    asdiv = recipe_overrides("asdiv")
    assert not any(k.startswith("checkpoints.") for k in asdiv), "recipes no longer keep a checkpoints map"
    with pytest.raises(ConfigError, match="control-2"):
        validate(apply_overrides(raw, asdiv))                       # the map DVC needs is incomplete alone
    added = {k: v for k, v in complete(raw, asdiv).items() if k not in asdiv}
    assert added == {"checkpoints.control-2": "models/control-2"}   # control-1 is params.yaml's already
