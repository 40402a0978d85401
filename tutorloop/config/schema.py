"""Typed `params.yaml`: one pydantic model per section, validated before any work starts.

`params.yaml` is the only place knobs live; `dvc.yaml` lists, for each stage, the exact keys it
reads, so DVC re-runs a stage only when *its* knobs change. `validate()` checks the *whole* file
(cheap) and raises one `ConfigError` that lists every problem with its key and bad value —
unknown keys, wrong types, impossible values (K=0, negative lr), and cross-references (a round
whose `prev` is not a round, checkpoints that do not match the rounds). Collecting everything at
once (litgpt's args.py, alignment-handbook's configs.py) beats fix-one-rerun-find-the-next.
Reading the file and locating each problem's line is `tutorloop.config.loading`.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
    model_validator,
)

from tutorloop.errors import ConfigError
from tutorloop.secrets import redact


def _shown(key: str, value: Any) -> str:
    """A bad value as a config error shows it: never the value of a key-name field (a value that
    fails the NAME pattern is most likely the key itself), other values with secrets redacted."""
    if key.endswith("api_key_env"):
        return f"<{len(str(value))} characters, not shown: it may be the key itself>"
    return redact(repr(value))



# Batch sizes that may be `auto`: resolved per device when the stage starts (engine rows:
# tutorloop/inference/batching.py; training batches: tutorloop/train/batching.py).
# On CPU `auto` is the measured default below; on CUDA it is sized from free GPU memory. These
# constants are the only CPU sizes `auto` resolves to; a field's default is params.yaml's value
# (auto for practice/evaluate, PREFERENCE_BATCH_CPU for preference: tests/test_config.py checks).
ENGINE_ROWS_CPU = 128   # engine rows on 2 CPU cores (docs/engine.md's measurements)
SFT_BATCH_CPU = 8       # SFT examples per device step on CPU
PREFERENCE_BATCH_CPU = 4   # DPO pairs (KTO rows, RFT examples) per device step on CPU


def _batch_size(value: Any) -> int | str:
    # One validator instead of pydantic's union errors (one message per branch, twice as noisy).
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError("must be a positive integer or 'auto'")


# `Union` (not `|`): pydantic evaluates these annotations at runtime.
BatchSize = Annotated[Union[int, Literal["auto"]], PlainValidator(_batch_size, json_schema_input_type=Union[int, Literal["auto"]])]


class Section(BaseModel):
    """A params.yaml section. Every field's default is params.yaml's value for that key (one story:
    tests/test_config.py walks params.yaml and checks); a default only fills a key left out."""

    # extra="forbid": a typo'd key is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Runtime(Section):
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = one per core (never more: oversubscription is 12x slower)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where models run; auto = cuda if available")
    precision: Literal["auto", "float32", "bfloat16"] = Field("auto", description="compute precision of every stage that runs a model (practice, evaluate, training, local teacher and judge): auto = bf16 only where the device computes it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX; tutorloop/hardware.py), else fp32; `tutorloop doctor` says what it resolves to here")
    attention: Literal["auto", "sdpa"] = Field("auto", description="practice/evaluation decode attention on CPU (bf16 and fp32): auto = tutorloop's C kernel (tutorloop/inference/kernels/attention.py, fp32 accumulation; torch's SDPA where no C compiler), sdpa = torch's kernel")


class Prompt(Section):
    system: str = Field(description="system message of every chat prompt (training, practice, evaluation)")
    template: str = Field("{question}", description="user message; {question} is replaced by the problem text")


class BaseModelCfg(Section):
    source: str = Field(description="pkg:<module>/<file.gguf> (a GGUF shipped in a Python package), a local .gguf, a local HF dir, or a hub id")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="dtype the checkpoint is saved in")


NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"   # an environment variable's name


class Endpoint(Section):
    """An OpenAI-compatible server and how the client talks to it: one shape for every client
    (the teacher, the judge, a served student), read by tutorloop.llm.client.OpenAIChat."""

    model: str = Field("", description="the server's model name (transformers backends: a local HF checkpoint dir)")
    base_url: str = Field("", description="server URL, e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama); empty = api.openai.com")
    api_key_env: str = Field("OPENAI_API_KEY", pattern=NAME, description="NAME of the environment variable holding the API key (the key itself never goes in params)")
    concurrency: int = Field(8, gt=0, description="calls in flight at once")
    timeout: float = Field(120, gt=0, description="seconds per call before it counts as a timeout (retried)")
    max_retries: int = Field(6, ge=0, description="retries on 429/5xx/timeouts, with backoff honouring Retry-After")


def _default(field: str, default: Any, description: str | None = None):
    """Endpoint's `field` with another default (and description): same type and constraints."""
    info = copy.copy(Endpoint.model_fields[field])
    info.default = default
    if description:
        info.description = description
    return info


class Teacher(Endpoint):
    model: str = _default("model", "", "openai: the server's model name; transformers: a local HF checkpoint dir")
    concurrency: int = _default("concurrency", 8, "teacher calls in flight at once")
    kind: Literal["procedural", "dataset", "openai", "transformers"] = Field("procedural", description="procedural = the embedded offline teacher; dataset = labelled seed problems (jsonl/dataset) pass through as the teacher's solutions, no agents; openai = any OpenAI-compatible chat server; transformers = a local model")
    temperature: float = Field(0.7, ge=0, description="sampling temperature of every agent call")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling of every agent call")
    max_tokens: int = Field(1024, gt=0, description="tokens per teacher reply at most")
    seed: int = Field(0, description="sampling seed sent with each call (servers that honour it are reproducible)")
    json_mode: bool = Field(True, description="ask the server for JSON (response_format) where an agent expects JSON")
    verify: bool = Field(True, description="solve each new problem twice (independent samples); drop it if the answers disagree")
    batch_size: int = Field(8, gt=0, description="transformers: prompts generated together")
    calculator: bool = Field(False, description="transformers: the engine computes every `<<expr=` the teacher writes")


class Seeds(Section):
    source: Literal["procedural", "jsonl", "dataset"] = Field("procedural", description="where seed problems come from")
    path: str = Field("", description="jsonl: GSM8K-format file (question, answer ending '#### N')")
    dataset: str = Field("", description="dataset: a `datasets` id, e.g. openai/gsm8k")
    subset: str = Field("main", description="dataset: config name")
    split: str = Field("train", description="dataset: split")
    offset: int = Field(0, ge=0, description="skip the first N seed rows (e.g. rows used for evaluation)")
    shuffle: bool = Field(True, description="jsonl/dataset: take rows in a seeded random order")


class Agents(Section):
    ama: int = Field(2, ge=0, description="Ask-Me-Anything problems made from each seed (0 = off)")
    suggest_edit_rounds: int = Field(2, ge=0, description="Suggester -> Editor rounds per seed (Orca-Math: 2)")
    edits: list[Literal["percent", "step", "convert", "distractor", "chain"]] = Field(
        default_factory=lambda: ["percent", "step", "convert", "distractor", "chain"],
        description="procedural Suggester: kinds of edit it may propose")
    test_agents: bool = Field(False, description="also expand the held-out test seeds (false: test = seed problems only, like GSM8K test)")


class Generate(Section):
    teacher: Teacher = Field(default_factory=Teacher, description="who writes problems and solutions")
    seeds: Seeds = Field(default_factory=Seeds, description="seed problems the agents expand")
    agents: Agents = Field(default_factory=Agents, description="AgentInstruct agents")
    seed: int = Field(0, description="seed of the seed stream and of the split")
    n_sft: int = Field(gt=0, description="problems in the SFT set")
    n_practice: int = Field(gt=0, description="problems the student practises on (shared by all rounds)")
    n_test: int = Field(gt=0, description="held-out problems for evaluation")
    families: list[str] = Field(default_factory=list, description="procedural seed families to draw from; empty = all")
    max_answer_chars: int = Field(1800, gt=0, description="solutions longer than this are dropped (Orca-Math: 1,800)")
    near_dup: float = Field(0.8, gt=0, le=1, description="drop a problem whose word-3-gram Jaccard with a kept one is at least this")
    procedural_share: float = Field(0.0, ge=0, lt=1, description="with a dataset/LLM teacher: this share of the sft and practice sets comes from the embedded procedural teacher and its agents instead (the test set never mixes)")
    cache_dir: str = Field(".tutorloop-cache", description="teacher-call cache and resume journals (outside DVC outputs, so dvc repro --force re-pays nothing)")


class Decontaminate(Section):
    ngram: int = Field(13, gt=0, description="word n-gram length whose overlap with an evaluation problem marks a training record")
    min_overlap: float = Field(0.5, gt=0, le=1, description="a record is contaminated if this share of its n-grams occurs in one eval problem")
    max_share: float = Field(0.10, ge=0, le=1, description="fail the stage if more than this share of training records is contaminated")


class Lora(Section):
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="modules that get adapters")


class SftLora(Lora):
    """The SFT adapter: twice the rank (and alpha) of a round's, as params.yaml sets it."""

    r: int = Field(32, gt=0, description="LoRA rank")
    alpha: int = Field(64, gt=0, description="LoRA alpha (scale = alpha / r)")


class Sft(Section):
    lora: SftLora = Field(default_factory=SftLora, description="adapter shape; merged into models/round-0 at the end")
    learning_rate: float = Field(gt=0, description="peak learning rate (cosine schedule)")
    epochs: float = Field(gt=0, description="passes over the SFT set")
    batch_size: BatchSize = Field(description="examples per device step; auto = 8 on CPU, on CUDA the largest that fits free memory with grad_accum adjusted so batch_size x grad_accum stays 8 x grad_accum (the same optimisation on every device)")
    grad_accum: int = Field(2, gt=0, description="steps accumulated per optimizer update")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of updates spent warming up")
    max_length: int = Field(384, gt=0, description="tokens per example (prompt + solution); longer ones are truncated")
    seed: int = Field(0, description="training seed (data order, adapter init)")
    logging_steps: int = Field(5, gt=0, description="log loss every N updates")
    save_steps: int = Field(20, ge=0, description="checkpoint every N updates so a killed run resumes there (0 = never)")
    group_by_length: bool = Field(True, description="batch examples of similar length (HF LengthGroupedSampler): random batches of 8 GSM8K examples are 1.5x padding, grouped ones 1.01x")


class PracticeRound(Section):
    samples: int = Field(4, gt=0, description="K: solutions sampled per practice problem (Orca-Math: 4)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature (Orca-Math: 0.7)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling (Orca-Math: 0.95)")
    # No default: each round states its own (params.yaml: round r samples with seed r), and no
    # single default could equal every round's value.
    seed: int = Field(description="sampling seed of this round")
    offset: int = Field(0, ge=0, description="first practice problem of this round: with practice.limit, each round practises on its own slice [offset, offset+limit) of the set")
    select: Literal["all", "signal"] = Field("all", description="which problems of the source: all = the slice [offset, offset+limit); signal = practice.limit of them from offset on, drawn with weight p(1-p) on the pass rate the earlier rounds' samples predict (per problem, and per family / type / grade; uniform in round 1), where K samples most often hold both a right and a wrong answer")
    source: Literal["fresh", "sft", "frontier"] = Field("fresh", description="practice problems: fresh = the practice set's slice; sft = the SFT problems themselves (as Orca-Math practised on its training set); frontier = the fresh slice, kept only where the student's pass rate over its K samples is strictly between 0 and 1")


class MethodRound(Section):
    """What every round method takes: its step, passes and seed. Each method's model adds only
    the knobs it reads (a key of another method is an error naming both; `_drop_inert_keys` says
    which ones are let through)."""

    method: Literal["dpo", "kto", "rft"] = Field(description="round objective (the discriminator: see PreferenceRound)")
    learning_rate: float = Field(gt=0, description="peak learning rate")
    epochs: float = Field(1.0, gt=0, description="passes over the round's training rows (pairs, KTO rows or RFT examples)")
    # No default: each round states its own (params.yaml: round r trains with seed r).
    seed: int = Field(description="training seed of this round (data order, adapter init; KTO: its row shuffle)")

    @model_validator(mode="before")
    @classmethod
    def _drop_inert_keys(cls, data: Any) -> Any:
        """Drop another method's keys that hold that method's default: inert here.

        `dvc exp run -S rounds.1.preference.method=rft` cannot delete keys, so switching a
        params.yaml dpo round ({reference: prev, beta: 0.1, sft_weight: 0.0}) must validate; a
        foreign key set to anything else would be silently ignored, so it stays an error."""
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items() if k in cls.model_fields or not _inert(k, v)}


class DpoRound(MethodRound):
    """DPO on the round's pairs (pairs.jsonl) against a frozen reference; RPO with sft_weight > 0."""

    method: Literal["dpo"] = Field("dpo", description="dpo: positives x negatives pairs from the round's feedback (the default when a round names no method)")
    reference: Literal["prev", "sft"] = Field("prev", description="reference model: prev = the round r-1 model the policy starts from (adapter disabled); sft = models/round-0")
    beta: float = Field(0.1, gt=0, description="beta of the DPO loss (strength of the pull toward the reference)")
    sft_weight: float = Field(0.0, ge=0, description="weight of an SFT (NLL) term on the chosen solution beside the DPO loss (RPO, TRL loss_type [sigmoid, sft]); 0 = plain DPO")


class KtoRound(MethodRound):
    """KTO on the same table as unpaired desirable/undesirable rows (unpaired.jsonl)."""

    method: Literal["kto"] = Field(description="kto: the round's table as unpaired desirable/undesirable examples")
    reference: Literal["prev", "sft"] = Field("prev", description="reference model: prev = the round r-1 model the policy starts from (adapter disabled); sft = models/round-0")
    beta: float = Field(0.1, gt=0, description="beta of the KTO loss (strength of the pull toward the reference)")


class RftRound(MethodRound):
    """Rejection-sampling fine-tuning on rft.jsonl: supervised, so no reference and no beta."""

    method: Literal["rft"] = Field(description="rft: fine-tune on the student's distinct strictly correct solutions mixed with the teacher's (rft.jsonl)")
    start: Literal["prev", "sft"] = Field("prev", description="fine-tune from the previous round's model (prev) or, as ReST-EM does, from the SFT model every round (sft)")
    rft_rows: Literal["both", "student", "teacher"] = Field("both", description="what the round trains on from rft.jsonl: both = the student's distinct correct solutions and the teacher's; student = the student's alone (RFT as published); teacher = the teacher's alone (the control: a second pass over the teacher's solutions, no student signal)")
    rft_weight: Literal["uniform", "failures"] = Field("uniform", description="how the judge weighs those rows: uniform = each once; failures = a problem's teacher solution once per sample judged wrong (its student solutions once), problems solved in every sample dropped, so the round trains where practice found errors (its control stays uniform over all the round's problems, the always-solved included)")


METHOD_ROUNDS: dict[str, type[MethodRound]] = {"dpo": DpoRound, "kto": KtoRound, "rft": RftRound}


def _inert(key: str, value: Any) -> bool:
    """`key` is another method's knob and `value` its default there (dpo and kto share theirs)."""
    for model in METHOD_ROUNDS.values():
        info = model.model_fields.get(key)
        if info is not None and not info.is_required():
            return isinstance(value, bool) == isinstance(info.default, bool) and value == info.default
    return False


def _method_of(value: Any) -> str:
    """The round's method: its tag in the union; no `method` key = dpo, as before the union."""
    method = value.get("method", "dpo") if isinstance(value, dict) else getattr(value, "method", "dpo")
    # a non-string never matches a tag: pydantic reports it (validate() rewrites that error)
    return method if isinstance(method, str) else repr(method)


# One model per method, picked by `method`: a round holds only the knobs its method reads.
PreferenceRound = Annotated[
    Union[Annotated[DpoRound, Tag("dpo")], Annotated[KtoRound, Tag("kto")], Annotated[RftRound, Tag("rft")]],
    Discriminator(_method_of),
]


class Round(Section):
    prev: str = Field(description="checkpoint this round starts from and uses as reference: '0' (SFT) or an earlier round")
    practice: PracticeRound = Field(description="sampling knobs of this round (its seed has no default, so the section is required)")
    preference: PreferenceRound = Field(description="learning knobs of this round: one method's (dpo, kto or rft) and only its")


class StudentEndpoint(Endpoint):
    """An OpenAI-compatible server that serves the stage's checkpoint (backend: openai)."""

    model: str = _default("model", "", "the served model name; empty = the checkpoint folder's name (models/round-0 -> round-0, models/base -> base)")
    base_url: Union[str, list[str]] = Field("", description="the server's URL, e.g. http://localhost:8000/v1 for `vllm serve models/round-0 --served-model-name round-0`, or a list of servers serving the same checkpoint (one vLLM per GPU, several `tutorloop serve`): requests go to each in turn and move to a healthy one when one fails; required for backend openai")
    api_key_env: str = _default("api_key_env", "VLLM_API_KEY", "NAME of the environment variable holding the server's key; VLLM_API_KEY is the one vLLM itself reads (one export serves both), and an OpenAI key in OPENAI_API_KEY is never sent to a student's server by default; unset = any key, which keyless local servers accept")
    concurrency: int = _default("concurrency", 64, "requests in flight at once (a vLLM server batches them continuously: more in flight = fuller GPU)")
    timeout: float = _default("timeout", 300, "seconds per request before it counts as a timeout (retried)")
    max_retries: int = _default("max_retries", 6, "retries on 429/5xx/timeouts, with backoff honouring Retry-After (the one OpenAI-compatible client)")
    n: bool = Field(True, description="ask for the K samples of a problem in one request (`n`; vLLM, OpenAI); false = K requests with seeds seed + 7919k, for servers that ignore n (llama.cpp, Ollama)")
    cache_dir: str = Field(".tutorloop-cache", description="every reply is cached here (calls.sqlite, keyed by the checkpoint's content hash): a re-run sends nothing")


class Decoding(Section):
    """How a stage decodes with the student: practice and evaluate share this shape."""

    backend: Literal["local", "openai"] = Field("local", description="who decodes: local = the generation engine in this process; openai = an OpenAI-compatible server serving the checkpoint (`server`), e.g. vLLM on a GPU; greedy is temperature 0 there")
    server: StudentEndpoint = Field(default_factory=StudentEndpoint, description="backend openai: the server and its client settings")
    batch_size: BatchSize = Field("auto", description="local: sequences decoded together by the engine (finished ones are refilled); auto = 128 on CPU, on CUDA as many as free memory holds")
    max_new_tokens: int = Field(160, gt=0, description="tokens per solution at most")
    limit: int = Field(0, ge=0, description="practice: N problems per round (from rounds.r.practice.offset); evaluate: the first N held-out problems; 0 = all")
    calculator: bool = Field(False, description="the engine computes every `<<expr=` the model writes and writes `value>>` for it (tutorloop/inference/calculator.py; part of the evaluation protocol)")


class Practice(Decoding):
    """practice@r: the student samples rounds.r.practice.samples solutions per problem."""


class Judge(Endpoint):
    mode: Literal["none", "fallback", "double_check"] = Field("none", description="LLM judge (Orca-Math's GPT-4 exact-match judge): fallback = only where no answer can be parsed; double_check = every sample, disagreements logged (not `off`: YAML 1.1 readers turn an unquoted off into false, and `dvc exp run -S` rewrites params.yaml without quotes)")
    kind: Literal["openai", "transformers"] = Field("openai", description="backend, as generate.teacher.kind")
    model: str = _default("model", "", "judge model (server model name, or a local dir for transformers)")
    concurrency: int = _default("concurrency", 8, "judge calls in flight at once")
    timeout: float = _default("timeout", 60, "seconds per judge call before it counts as a timeout (retried)")
    batch_size: int = Field(8, gt=0, description="transformers: prompts per generate()")
    cache_dir: str = Field(".tutorloop-cache", description="judge calls are cached here too (never paid twice)")


class Followup(Section):
    enabled: bool = Field(False, description="feed problems the student got wrong in all K samples back to generation: their variants join the next round's practice set")
    variants: int = Field(3, ge=1, description="new problems per failed problem at most (easier via Ask-Me-Anything, harder via Suggester -> Editor)")
    max_new: int = Field(200, ge=0, description="cap on new practice problems per round")


class Feedback(Section):
    judge: Judge = Field(default_factory=Judge, description="optional LLM judge beside the deterministic one")
    labels: Literal["strict", "lenient"] = Field("strict", description="strict = a sample is correct only if it states its answer with a marker (#### N, \\boxed{N}, 'The answer is N'); lenient also accepts the last number written")
    max_pairs_per_problem: int = Field(2, gt=0, description="cap on positives x negatives pairs from one problem")
    max_pairs: int = Field(160, ge=0, description="cap on the round's pairs (DPO time grows with them); student-chosen pairs kept first; 0 = no cap")
    borrowed_negatives: int = Field(4, ge=0, description="problems with no wrong sample borrow one negative from each of this many others (Orca-Math: 4)")
    seed: int = Field(0, description="seed for choosing pairs and borrowed negatives")


class Preference(Section):
    """preference@r: DPO, KTO or RFT (rounds.r.preference.method) on a fresh LoRA adapter."""

    lora: Lora = Field(default_factory=Lora, description="fresh adapter trained each round, then merged")
    batch_size: BatchSize = Field(PREFERENCE_BATCH_CPU, description="pairs (KTO rows, RFT examples) per device step; auto = 4 on CPU, on CUDA the largest that fits free memory with grad_accum adjusted so batch_size x grad_accum stays 4 x grad_accum")
    grad_accum: int = Field(2, gt=0, description="steps accumulated per optimizer update")
    max_length: int = Field(384, gt=0, description="tokens per prompt + completion")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of updates spent warming up")
    logging_steps: int = Field(5, gt=0, description="log loss and rewards every N updates")
    save_steps: int = Field(20, ge=0, description="checkpoint every N updates so a killed run resumes there (0 = never)")


class Training(Section):
    """How the training stages (sft, preference@r, control@k) are launched: one process, or
    several under `accelerate launch` (tutorloop/runtime/distributed.py)."""

    launcher: Literal["none", "accelerate"] = Field("none", description="none = the stage trains in its own process; accelerate = it relaunches itself under `accelerate launch` (DDP over training.processes; FSDP / ZeRO-3 with accelerate_config), rank 0 logging, writing and merging")
    processes: int = Field(1, ge=1, description="training processes per machine (one per GPU; on a CPU, gloo processes sharing its cores); the global batch stays batch_size x grad_accum, so grad_accum (or else the per-device batch) is divided by the process count")
    machines: int = Field(1, ge=1, description="machines training together (their ranks, addresses and ports come from accelerate_config)")
    accelerate_config: str = Field("", description="an `accelerate config` file (infra/accelerate/fsdp2.yaml, zero3.yaml, multi-machine settings); empty = plain DDP through torchrun")


class Placement(Section):
    """Where the flows run each stage: here (the default), or on a Prefect worker elsewhere."""

    stages: dict[str, str] = Field(default_factory=dict, description="stage name or pattern (fnmatch: 'sft', 'preference@*') -> the Prefect deployment that runs it on a worker in another workspace ('tutorloop-stage/worker', infra/prefect.yaml): the flow pushes the stage's inputs to the DVC remote, waits for the worker's run, and restores its outputs from DVC's run cache; {} = every stage here")


class Gsm8k(Section):
    path: str = Field("../shared/data/gsm8k/train.jsonl", description="local GSM8K-format jsonl (question, answer ending '#### N'); empty = none; a path set here that does not exist is an error (it also feeds decontamination); the default, absent without ../shared, is skipped with a note")
    dataset: str = Field("", description="`datasets` id (e.g. openai/gsm8k), used when path is empty; needs the hub")
    subset: str = Field("main", description="config name of `dataset` (GSM8K: main)")
    split: str = Field("test", description="split of `dataset`")
    limit: int = Field(100, ge=0, description="evaluate on the first N problems; 0 = all")


class Evaluate(Decoding):
    fewshot: int = Field(0, ge=0, description="worked examples (from the SFT set) shown before each problem; 0 = zero-shot")
    maj_k: int = Field(0, ge=0, description="also sample k solutions per problem and score the majority answer (maj@k); 0 = off")
    maj_temperature: float = Field(0.7, gt=0, description="sampling temperature for maj@k")
    pass_k: list[Annotated[int, Field(gt=0)]] = Field([1, 4, 16], description="report pass@k (unbiased, from the maj_k samples) for each k <= maj_k: the headroom a round on the student's own samples can reach")
    gsm8k: Gsm8k = Field(default_factory=Gsm8k, description="optional real GSM8K evaluation")


class Register(Section):
    model_name: str = Field("tutor", min_length=1, description="registered model name")
    metric: Literal["accuracy"] = Field("accuracy", description="held-out metric recorded on each version")
    test: Literal["mcnemar", "accuracy"] = Field("mcnemar", description="promotion rule: exact one-sided McNemar on shared problems, or plain higher accuracy")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the McNemar promotion test")
    log_model: bool = Field(True, description="log the weights with mlflow.transformers (loadable from models:/...); false registers the DVC-owned folder, which later runs overwrite")


class Params(Section):
    runtime: Runtime = Field(default_factory=Runtime, description="compute settings shared by all stages")
    prompt: Prompt = Field(description="chat prompt shared by training, practice and evaluation")
    base_model: BaseModelCfg
    generate: Generate
    decontaminate: Decontaminate = Field(default_factory=Decontaminate)
    sft: Sft
    practice: Practice = Field(default_factory=Practice)
    feedback: Feedback = Field(default_factory=Feedback)
    followup: Followup = Field(default_factory=Followup, description="closing the loop: failures become next round's practice")
    preference: Preference = Field(default_factory=Preference, description="preference learning shared by every round (DPO, KTO or RFT: rounds.r.preference)")
    evaluate: Evaluate = Field(default_factory=Evaluate)
    training: Training = Field(default_factory=Training, description="how the training stages are launched: one process or several (accelerate)")
    placement: Placement = Field(default_factory=Placement, description="which stages the flows send to a Prefect worker elsewhere (read by flows/, by no stage)")
    # `register` would shadow BaseModel.register (ABC); the alias keeps the YAML key.
    register_: Register = Field(default_factory=Register, alias="register")
    rounds: dict[str, Round] = Field(description="preference rounds keyed by number ('1', '2', ...); keys quoted for DVC")
    controls: dict[str, str] = Field(description="control@k for each round key k listed, valued the checkpoint round k starts from (rounds.k.prev, quoted): round k's training, rows and updates on the teacher's solutions alone (models/control-k), evaluated and registered as checkpoint control-k but never a champion; {} = none (each costs a round's training)")
    checkpoints: dict[str, str] = Field(description="every model evaluated and registered: key -> model dir")


def _round_checks(key: str, rnd: dict, raw: dict) -> list[str]:
    """Problems of one round that span sections: its practice slice, and KTO's batch. (Which keys
    a method takes is the schema's: one model per method, `PreferenceRound`.)"""
    problems: list[str] = []
    practice = rnd.get("practice") if isinstance(rnd.get("practice"), dict) else {}
    offset = practice.get("offset", 0)
    # the offset indexes the set the round practises on: the SFT problems for source: sft
    size_key = "n_sft" if practice.get("source") == "sft" else "n_practice"
    size = (raw.get("generate") or {}).get(size_key) if isinstance(raw.get("generate"), dict) else None
    if isinstance(offset, int) and isinstance(size, int) and offset >= size:
        problems.append(f"rounds.{key}.practice.offset: {offset!r} -> past the "
                        f"{'SFT' if size_key == 'n_sft' else 'practice'} set (generate.{size_key}: {size})")
    pref = rnd.get("preference")
    if isinstance(pref, dict) and pref.get("method") == "kto":
        section = raw.get("preference")
        batch = section.get("batch_size", PREFERENCE_BATCH_CPU) if isinstance(section, dict) else PREFERENCE_BATCH_CPU
        if isinstance(batch, int) and batch < 2:
            problems.append(f"preference.batch_size: {batch!r} -> KTO estimates its KL term across a batch; use >= 2")
    return problems


def _generate_checks(gen, evaluate) -> list[str]:
    """The teacher, its seeds and the GSM8K side check agree (defensive: raw values)."""
    problems: list[str] = []
    if not isinstance(gen, dict):
        return problems
    teacher = gen.get("teacher") if isinstance(gen.get("teacher"), dict) else {}
    seeds = gen.get("seeds") if isinstance(gen.get("seeds"), dict) else {}
    kind, source = teacher.get("kind", "procedural"), seeds.get("source", "procedural")
    if kind == "dataset" and source == "procedural":
        problems.append("generate.seeds.source: 'procedural' -> the dataset teacher passes labelled problems "
                        "through; give it seeds from jsonl or a dataset")
    if kind == "procedural" and gen.get("procedural_share", 0):
        problems.append(f"generate.procedural_share: {gen.get('procedural_share')!r} -> the teacher is already "
                        "procedural; the share mixes procedural problems into a dataset/LLM teacher's data")
    if kind == "procedural" and source != "procedural":
        problems.append(f"generate.seeds.source: {source!r} -> the procedural teacher's agents work on its own "
                        "graphs; use an LLM teacher (openai/transformers) to expand text seeds")
    if kind not in ("procedural", "dataset") and teacher.get("verify", True) and teacher.get("temperature", 0.7) == 0:
        problems.append("generate.teacher.verify: True -> two solves at temperature 0 always agree; "
                        "set temperature > 0 or verify: false")
    if kind not in ("procedural", "dataset") and not teacher.get("model"):
        problems.append(f"generate.teacher.model: {teacher.get('model', '')!r} -> required for teacher {kind!r}")
    if source == "jsonl" and not seeds.get("path"):
        problems.append("generate.seeds.path: '' -> required for seeds from jsonl")
    if source == "dataset" and not seeds.get("dataset"):
        problems.append("generate.seeds.dataset: '' -> required for seeds from a dataset")
    gsm = ((evaluate or {}).get("gsm8k") or {}) if isinstance(evaluate, dict) else {}
    if (source == "jsonl" and seeds.get("path") and seeds.get("path") == gsm.get("path")
            and seeds.get("offset", 0) < (gsm.get("limit") or 10**9)):
        problems.append(f"generate.seeds.offset: {seeds.get('offset', 0)!r} -> seeds and evaluate.gsm8k read the same "
                        f"file; skip the {gsm.get('limit')} evaluated rows (offset >= evaluate.gsm8k.limit)")
    return problems


def _cross_checks(raw: dict) -> list[str]:
    """Problems that span keys; defensive, since field validation may have failed too."""
    problems: list[str] = []
    rounds = raw.get("rounds")
    if not isinstance(rounds, dict):
        return problems
    if not rounds:
        problems.append("rounds: {} -> at least one round is needed")
    for key, rnd in rounds.items():
        if not str(key).isdigit() or int(key) < 1:
            problems.append(f"rounds.{key}: {key!r} -> round keys are '1', '2', ... (quoted)")
            continue
        prev = rnd.get("prev") if isinstance(rnd, dict) else None
        if prev is None:
            continue
        prev = str(prev)
        if prev != "0" and (prev not in rounds or not prev.isdigit() or int(prev) >= int(key)):
            problems.append(f"rounds.{key}.prev: {prev!r} -> must be '0' or an earlier round in rounds")
        problems += _round_checks(str(key), rnd, raw)
    problems += _generate_checks(raw.get("generate"), raw.get("evaluate"))
    for stage in ("practice", "evaluate"):
        problems += _backend_checks(stage, raw.get(stage))
    fb = raw.get("feedback")
    judge = fb.get("judge") if isinstance(fb, dict) and isinstance(fb.get("judge"), dict) else {}
    if judge.get("mode", "none") != "none" and not judge.get("model"):
        problems.append(f"feedback.judge.model: {judge.get('model', '')!r} -> required when judge.mode is {judge.get('mode')!r}")
    checkpoints = raw.get("checkpoints")
    if isinstance(checkpoints, dict):
        want = expected_checkpoints(raw)
        have = {str(k): v for k, v in checkpoints.items()}
        if have != want:
            problems.append(f"checkpoints: {have!r} -> must be {want!r} (base, SFT, every round and control)")
    problems += _control_checks(raw, rounds) + _training_checks(raw)
    return problems


def _training_checks(raw: dict) -> list[str]:
    """Several processes need the launcher, and each must get a whole share of the global batch."""
    training = raw.get("training")
    if not isinstance(training, dict):
        return []
    processes, problems = training.get("processes", 1), []
    if not isinstance(processes, int) or processes < 1:
        return problems   # field validation names it
    world = processes * (training.get("machines") or 1) if isinstance(training.get("machines", 1), int) else processes
    if world > 1 and training.get("launcher", "none") != "accelerate":
        problems.append(f"training.launcher: {training.get('launcher', 'none')!r} -> {world} training processes need "
                        "launcher: accelerate")
    for section, cpu_default in (("sft", SFT_BATCH_CPU), ("preference", PREFERENCE_BATCH_CPU)):
        cfg = raw.get(section) if isinstance(raw.get(section), dict) else {}
        batch, accum = cfg.get("batch_size", cpu_default), cfg.get("grad_accum", 2)
        batch = cpu_default if batch == "auto" else batch
        if isinstance(batch, int) and isinstance(accum, int) and accum % world and batch % world:
            problems.append(f"training.processes: {processes!r} -> {section}'s global batch ({section}.batch_size {batch} "
                            f"x grad_accum {accum}) cannot be split over {world} processes: make grad_accum or "
                            f"batch_size a multiple of {world}")
    return problems


CONTROL = "control-"   # checkpoint control-k: round k's control (models/control-k, stage control@k)


def expected_checkpoints(raw: dict) -> dict[str, str]:
    """The `checkpoints` map the rounds and controls of a params mapping imply: base, SFT, every
    round and control. params.yaml spells it out because DVC's `foreach` reads it from there;
    a recipe's are derived (tutorloop/config/recipes.py)."""
    rounds = raw.get("rounds") if isinstance(raw.get("rounds"), dict) else {}
    controls = raw.get("controls") if isinstance(raw.get("controls"), dict) else {}
    return {"base": "models/base", "0": "models/round-0", **{str(k): f"models/round-{k}" for k in rounds},
            **{f"{CONTROL}{k}": f"models/{CONTROL}{k}" for k in controls}}


def control_round(checkpoint: str) -> str | None:
    """The round a control checkpoint (`control-k`) is the control of; None for any other."""
    return checkpoint[len(CONTROL):] if checkpoint.startswith(CONTROL) else None


def _control_checks(raw: dict, rounds: dict) -> list[str]:
    """A control names a round and starts where that round starts (DVC interpolates its start
    model from the value, so the value must be the round's prev)."""
    controls = raw.get("controls")
    if not isinstance(controls, dict):
        return []
    problems = []
    for key, start in controls.items():
        rnd = rounds.get(str(key))
        if not isinstance(rnd, dict):
            problems.append(f"controls.{key}: {start!r} -> round {key!r} is not in rounds")
        elif str(start) != str(rnd.get("prev")):
            problems.append(f"controls.{key}: {start!r} -> must be round {key}'s start, rounds.{key}.prev "
                            f"({rnd.get('prev')!r}): the control trains from the round's own starting checkpoint")
    return problems


def _renamed_keys(raw: dict) -> list[str]:
    """Keys of an older params.yaml that moved (2026-12: the `dpo` section and stage became
    `preference`, as they also run KTO and RFT; the per-stage `dtype` keys became `runtime.precision`):
    say where each went, beside pydantic's "extra" error."""
    problems = []
    if "dpo" in raw:
        problems.append("dpo: ... -> renamed to `preference` (the stage is preference@r; it runs DPO, KTO or RFT)")
    for path in (("practice",), ("evaluate",), ("generate", "teacher"), ("feedback", "judge")):
        node = raw
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and "dtype" in node:
            problems.append(f"{'.'.join(path)}.dtype: {node['dtype']!r} -> replaced by runtime.precision "
                            "(one key for every stage; auto = bf16 only where the device computes it natively)")
    rounds = raw.get("rounds") if isinstance(raw.get("rounds"), dict) else {}
    for key, rnd in rounds.items():
        if isinstance(rnd, dict) and "dpo" in rnd:
            problems.append(f"rounds.{key}.dpo: ... -> renamed to rounds.{key}.preference")
    return problems


def _backend_checks(stage: str, cfg: Any) -> list[str]:
    """A server backend samples remotely: it needs a URL, and cannot run the calculator."""
    if not isinstance(cfg, dict) or cfg.get("backend", "local") != "openai":
        return []
    problems = []
    server = cfg.get("server") if isinstance(cfg.get("server"), dict) else {}
    if not server.get("base_url"):
        problems.append(f"{stage}.server.base_url: {_shown('base_url', server.get('base_url', ''))} -> required for "
                        f"{stage}.backend: openai (the server serving the checkpoint, e.g. http://localhost:8000/v1)")
    if cfg.get("calculator"):
        # The hook writes `value>>` into the sequence mid-decode; a server decodes on its own.
        problems.append(f"{stage}.calculator: True -> the calculator runs inside the local engine, and a server "
                        f"cannot run it: set {stage}.calculator: false or {stage}.backend: local")
    return problems


def _foreign(key: str, method: str) -> str:
    """Why `key` is refused in a `method` round: the keys it takes, and whose the key is."""
    takes = ", ".join(METHOD_ROUNDS[method].model_fields)
    owners = [m for m, model in METHOD_ROUNDS.items() if key in model.model_fields]
    if not owners:
        return f"not a key of method {method!r} ({method} takes: {takes})"
    default = METHOD_ROUNDS[owners[0]].model_fields[key].default
    return (f"not a key of method {method!r} ({method} takes: {takes}); {key} is {' and '.join(owners)}'s: "
            f"another method lets it through only at its default {default!r}, where it changes nothing")


def _problem(err: dict) -> str:
    """One pydantic error as `key: value -> problem`. A round method's errors lose the union's tag
    (`rounds.1.preference.kto.beta` -> `rounds.1.preference.beta`: the key as the YAML spells it,
    which loading.py locates), and a key foreign to the method says so and names both."""
    loc = [str(p) for p in err["loc"]]
    tagged = len(loc) > 3 and loc[0] == "rounds" and loc[2] == "preference" and loc[3] in METHOD_ROUNDS
    method = loc.pop(3) if tagged else None
    key = ".".join(loc)
    if err["type"] == "union_tag_invalid":   # `method` is none of the tags
        value = err["input"].get("method") if isinstance(err.get("input"), dict) else err.get("input")
        return f"{key}.method: {_shown('method', value)} -> must be one of {', '.join(map(repr, METHOD_ROUNDS))}"
    if method and err["type"] == "extra_forbidden":
        return f"{key}: {_shown(key, err.get('input'))} -> {_foreign(loc[-1], method)}"
    return f"{key}: {_shown(key, err.get('input'))} -> {err['msg']}"


def validate(raw: dict) -> Params:
    """Validate a parsed params.yaml; raise ConfigError listing every problem."""
    problems: list[str] = []
    params = None
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        problems += [_problem(e) for e in err.errors()]
    if isinstance(raw, dict):
        problems += _cross_checks(raw) + _renamed_keys(raw)
    if problems:
        raise ConfigError("invalid params.yaml:\n  " + "\n  ".join(problems), problems=problems)
    assert params is not None
    return params

