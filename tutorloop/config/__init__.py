"""Typed params.yaml: the schema (one pydantic model per section, a one-line doc per field) and
the loader that names the file and line of every problem.

    schema.py    the sections; `Endpoint` is the one shape of every OpenAI-compatible client
                 (teacher, judge, served student), `Decoding` the one shape of practice/evaluate
    loading.py   read_yaml, load_params: YAML syntax and bad values as `file:line:` problems

May import: tutorloop.errors, tutorloop.secrets (and pydantic, yaml). Nothing else of tutorloop.
"""

from tutorloop.config.loading import load_params, read_yaml, yaml_error  # noqa: F401
from tutorloop.config.schema import (  # noqa: F401  (the schema's public names, re-exported)
    CONTROL,
    ENGINE_ROWS_CPU,
    METHOD_ROUNDS,
    PREFERENCE_BATCH_CPU,
    SFT_BATCH_CPU,
    Agents,
    BaseModelCfg,
    Decoding,
    Decontaminate,
    DpoRound,
    Endpoint,
    Evaluate,
    Feedback,
    Followup,
    Generate,
    Gsm8k,
    Judge,
    KtoRound,
    Lora,
    MethodRound,
    Params,
    Placement,
    Practice,
    PracticeRound,
    Preference,
    PreferenceRound,
    Prompt,
    Register,
    Training,
    RftRound,
    Round,
    Runtime,
    Seeds,
    Sft,
    SftLora,
    StudentEndpoint,
    Teacher,
    control_round,
    validate,
)
from tutorloop.errors import PARAMS_FILE, ConfigError  # noqa: F401
