"""A round's learning on its feedback (DPO, KTO or RFT), thin over TRL's trainers.

`rounds.r.preference.method` picks the objective, both with a *fresh* LoRA adapter on the
merged round r-1 model:

* `dpo`: `DPOTrainer` on pairs.jsonl (positives x negatives, Orca-Math's rules); with
  `sft_weight` > 0 an NLL term on the chosen side is added (RPO: TRL's loss_type [sigmoid, sft]).
* `kto`: `KTOTrainer` on unpaired.jsonl (the same table, desirable/undesirable), with class
  weights from the imbalance: desirable_weight * n_desirable = undesirable_weight * n_undesirable,
  the balance the KTO paper recommends (TRL warns outside [1, 4/3]); our tables are mostly
  desirable (the teacher's solution is always one), so undesirable examples get the larger weight.

* `rft`: rejection-sampling fine-tuning — TRL's `SFTTrainer` (the SFT stage's, completion-only
  loss) on rft.jsonl: the student's distinct strictly correct solutions mixed with the teacher's
  (tutorloop/data/preferences.py), or either alone (`rft_rows: student | teacher`; teacher-only
  is the control for what the student's own solutions add). From round r-1, or (`start: sft`)
  from the SFT model every round, as ReST-EM does. No reference model.

Reference (`rounds.r.preference.reference`): `prev` (default) passes `ref_model=None`, so TRL uses
the adapter-disabled model — exactly round r-1, because the adapter is fresh (re-using an adapter
trained in an earlier round would make the reference drift: the PEFT pitfall this avoids). `sft`
loads models/round-0 as an explicit frozen reference. The adapter is merged and saved as a plain
checkpoint. Precision and batch per device: tutorloop/train/precision.py and batching.py, from the
stage's resolved runtime (tutorloop/hardware.py), never re-resolved here.
"""

from __future__ import annotations

import random
from pathlib import Path

from tutorloop.config import PREFERENCE_BATCH_CPU, ConfigError, Params, Prompt
from tutorloop.data.jsonl import read_jsonl
from tutorloop.data.preferences import control_rows, select_rft, weigh_rft
from tutorloop.hardware import ResolvedRuntime
from tutorloop.modeling import load, messages
from tutorloop.runtime.distributed import world_size
from tutorloop.train.batching import device_batch
from tutorloop.train.lora import lora_config
from tutorloop.train.precision import train_dtype
from tutorloop.train.resume import train_and_merge, trainer_args, work_dir

# the trainer's last logged value of each, reported as the stage's metric of that name
LOGGED = (("rewards/accuracies", "reward_accuracy"), ("rewards/margins", "reward_margin"),
          ("rewards/chosen", "reward_chosen"), ("rewards/rejected", "reward_rejected"), ("kl", "kl"))


def to_preference(rows: list[dict], p: Prompt) -> list[dict]:
    """TRL's conversational preference format: shared prompt, chosen/rejected assistant turns."""
    return [{"prompt": messages(r["question"], p.system, p.template),
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def to_unpaired(rows: list[dict], p: Prompt, seed: int) -> list[dict]:
    """TRL's conversational unpaired format. KTOTrainer samples sequentially (its KL estimate
    pairs neighbours in a batch), so the order is shuffled here, seeded, to mix the labels."""
    out = [{"prompt": messages(r["question"], p.system, p.template),
            "completion": [{"role": "assistant", "content": r["completion"]}], "label": bool(r["label"])}
           for r in rows]
    random.Random(seed).shuffle(out)
    return out


def class_weights(rows: list[dict]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) with weight x count equal for both classes, the
    larger class at weight 1."""
    n_pos = sum(bool(r["label"]) for r in rows)
    n_neg = len(rows) - n_pos
    if not n_pos or not n_neg:
        raise ValueError(f"KTO needs both classes; got {n_pos} desirable and {n_neg} undesirable examples")
    return (1.0, n_pos / n_neg) if n_pos >= n_neg else (n_neg / n_pos, 1.0)


def load_models(params: Params, round_key: str, prev_model: Path, sft_model: Path | None,
                runtime: ResolvedRuntime):
    """(policy, tokenizer, explicit reference or None, device, resolved precision) for round
    `round_key`, on the stage's resolved `runtime`."""
    rcfg = params.rounds[round_key].preference
    device, precision = runtime.torch_device, runtime.precision
    dtype = train_dtype(runtime)
    model, tok = load(prev_model, dtype=dtype, device=device)
    ref_model = None
    # an rft round has no reference (RftRound has no such key): supervised, nothing to load
    if rcfg.method != "rft" and rcfg.reference == "sft" and params.rounds[round_key].prev != "0":
        if sft_model is None:
            raise ConfigError("rounds.%s.preference.reference: 'sft' needs the SFT model path (--sft)" % round_key)
        ref_model, _ = load(sft_model, dtype=dtype, device=device)
        ref_model.eval().requires_grad_(False)
    return model, tok, ref_model, device, precision


def trainer_and_data(params: Params, round_key: str, round_dir: Path, common: dict, device, control: bool = False):
    """(TRL trainer class, its config, the dataset rows, the metrics that describe them)."""
    rcfg = params.rounds[round_key].preference
    if control:
        return _control_data(params, round_key, round_dir, common, device)
    if rcfg.method == "rft":
        from trl import SFTConfig

        from tutorloop.train.sft import make_sft_trainer_class, to_conversations

        rows = rft_rows(round_dir, rcfg)
        if not rows:
            raise ConfigError(f"rounds.{round_key}.preference.rft_rows: {rcfg.rft_rows!r} (rft_weight: {rcfg.rft_weight!r}) "
                              f"-> {round_dir / 'rft.jsonl'} has no such rows (no strictly correct student solution "
                              "this round, or under failures no sample judged wrong?)")
        student = sum(r["source"] == "student" for r in rows)
        return (make_sft_trainer_class(device), SFTConfig(**common, completion_only_loss=True),
                to_conversations(rows, params.prompt),
                {"examples": len(rows), "student_solutions": student, "rows": len(rows)})
    if rcfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        rows = read_jsonl(round_dir / "pairs.jsonl", required=("question", "chosen", "rejected"))
        # RPO: the DPO loss plus an NLL term on the chosen side keeps the policy's likelihood of
        # correct solutions from falling while the margin grows (a known DPO failure on math).
        rpo = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, rcfg.sft_weight]) if rcfg.sft_weight else {}
        return (DPOTrainer, DPOConfig(**common, **rpo), to_preference(rows, params.prompt),
                {"pairs": len(rows), "sft_weight": rcfg.sft_weight, "rows": len(rows)})
    from trl import KTOConfig, KTOTrainer

    rows = read_jsonl(round_dir / "unpaired.jsonl", required=("question", "completion", "label"))
    dw, uw = class_weights(rows)
    return (KTOTrainer, KTOConfig(**common, desirable_weight=dw, undesirable_weight=uw),
            to_unpaired(rows, params.prompt, rcfg.seed),
            {"examples": len(rows), "desirable": sum(r["label"] for r in rows), "desirable_weight": dw,
             "undesirable_weight": uw, "rows": len(rows)})


def rft_rows(round_dir: Path, rcfg) -> list[dict]:
    """The rft.jsonl rows an RFT round trains on: weighed by the judge, then selected by source."""
    rows = read_jsonl(round_dir / "rft.jsonl", required=("question", "solution", "source"))
    return select_rft(weigh_rft(rows, rcfg.rft_weight), rcfg.rft_rows)


def round_rows(round_dir: Path, rcfg) -> int:
    """How many rows the round `rcfg` (its preference config) trains on: its RFT rows as it selects
    and weighs them, DPO pairs or KTO rows — the control's count."""
    if rcfg.method == "rft":
        return len(rft_rows(round_dir, rcfg))
    return len(read_jsonl(round_dir / ("pairs.jsonl" if rcfg.method == "dpo" else "unpaired.jsonl")))


def _control_data(params: Params, round_key: str, round_dir: Path, common: dict, device):
    """control@k's trainer and rows: the SFT trainer (completion-only loss) on the teacher's
    solutions of the round's problems, as many rows as the round trains on (`control_rows`). For
    an RFT round that is the round without the student's solutions (and, under `rft_weight:
    failures`, without the judge's weights: uniform over all the round's problems, the
    always-solved included); a DPO/KTO round has no
    objective without the student's negatives, so its control is the supervised pass on the
    teacher's solutions with the round's rows, step, batch and updates."""
    from trl import SFTConfig

    from tutorloop.train.sft import make_sft_trainer_class, to_conversations

    rcfg = params.rounds[round_key].preference
    n = round_rows(round_dir, rcfg)
    rows = control_rows(read_jsonl(round_dir / "rft.jsonl", required=("question", "solution", "source")), n,
                        rcfg.seed)
    if not rows:
        raise ConfigError(f"controls.{round_key}: {round_dir / 'rft.jsonl'} has no teacher rows to train on")
    args = {k: v for k, v in common.items() if k != "beta"}
    return (make_sft_trainer_class(device), SFTConfig(**args, completion_only_loss=True),
            to_conversations(rows, params.prompt),
            {"examples": len(rows), "student_solutions": 0, "control": 1.0, "rows": len(rows)})


def train_preference(params: Params, round_key: str, prev_model: Path, round_dir: Path, out: Path,
                     callbacks=(), sft_model: Path | None = None, control: bool = False, *,
                     runtime: ResolvedRuntime) -> dict:
    """Train round `round_key` on its feedback from `prev_model`, merge, save to `out`; metrics.
    `control`: control@k instead (`_control_data`): the same start, step, batch, updates and seed
    on the teacher's solutions alone."""
    from datasets import Dataset

    cfg, rcfg = params.preference, params.rounds[round_key].preference
    start = prev_model
    if rcfg.method == "rft" and rcfg.start == "sft":   # ReST-EM: every round from the SFT model
        if sft_model is None:
            raise ConfigError(f"rounds.{round_key}.preference.start: 'sft' needs the SFT model path (--sft)")
        start = sft_model
    model, tok, ref_model, device, precision = load_models(params, round_key, start, sft_model, runtime)
    # a DPO/KTO example is two sequences (chosen + rejected, or the completion + its KL partner)
    batch, accum = device_batch(cfg.batch_size, cfg.grad_accum, model, cfg.max_length, PREFERENCE_BATCH_CPU,
                                pairs=True)
    split = [[batch, accum]] if cfg.batch_size == "auto" else []   # auto: part of the run (sft.py says why)
    data_file = round_dir / {"dpo": "pairs.jsonl", "kto": "unpaired.jsonl", "rft": "rft.jsonl"}[rcfg.method]
    name = f"{'control-' if control else ''}{rcfg.method}-{round_key}"   # a control resumes apart from its round
    work = work_dir(name, cfg.model_dump(), rcfg.model_dump(), params.prompt.model_dump(),
                    start, data_file, sft_model if ref_model is not None else "", precision.dtype, *split,
                    *([round_dir / "rft.jsonl"] if control else []),   # a control's rows come from rft.jsonl
                    code=Path(__file__))
    common = trainer_args(work, learning_rate=rcfg.learning_rate, epochs=rcfg.epochs, batch=batch, grad_accum=accum,
                          warmup_ratio=cfg.warmup_ratio, max_length=cfg.max_length, seed=rcfg.seed,
                          logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, runtime=runtime)
    if rcfg.method != "rft":   # DPO's and KTO's loss strength; an RFT round has no beta (supervised)
        common["beta"] = rcfg.beta
    trainer_cls, args, data, described = trainer_and_data(params, round_key, round_dir, common, device, control)
    n_rows = described.pop("rows")
    # an RFT round (and any control) is supervised: no reference model (the SFT trainer takes none)
    ref = {} if rcfg.method == "rft" or control else {"ref_model": ref_model}
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tok,
                          peft_config=lora_config(cfg.lora), callbacks=list(callbacks), **ref)
    run = train_and_merge(trainer, work, tok, out, start)
    metrics: dict = {"method_kto": float(rcfg.method == "kto"), "method_rft": float(rcfg.method == "rft"),
                     "start_sft": float(start != prev_model),
                     "reference_sft": float(ref_model is not None and rcfg.method != "rft"),
                     "batch_size": batch, "grad_accum": accum, "processes": world_size(),
                     "precision": precision.dtype, **described,
                     "resumed_from_step": run.resumed_from_step, "train_loss": run.result.training_loss,
                     "train_seconds": run.seconds, "examples_per_second": n_rows * rcfg.epochs / run.seconds}
    for key, name in LOGGED:
        vals = [h[key] for h in trainer.state.log_history if key in h]
        if vals:
            metrics[name] = vals[-1]
    return metrics
