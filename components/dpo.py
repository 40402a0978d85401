"""Stage `dpo@r`: preference learning on the round's feedback -> models/round-r (DPO or KTO).

`rounds.r.dpo.method` picks the objective, both on TRL trainers with a *fresh* LoRA adapter on
the merged round r-1 model:

* `dpo`: `DPOTrainer` on pairs.jsonl (positives x negatives, Orca-Math's rules).
* `kto`: `KTOTrainer` on unpaired.jsonl (the same table, desirable/undesirable), with class
  weights from the imbalance: desirable_weight * n_desirable = undesirable_weight * n_undesirable,
  the balance the KTO paper recommends (TRL warns outside [1, 4/3]); our tables are mostly
  desirable (the teacher's solution is always one), so undesirable examples get the larger weight.

Reference (`rounds.r.dpo.reference`): `prev` (default) passes `ref_model=None`, so TRL uses the
adapter-disabled model — exactly round r-1, because the adapter is fresh (re-using an adapter
trained in an earlier round would make the reference drift: the PEFT pitfall this avoids).
`sft` loads models/round-0 as an explicit frozen reference (Orca-Math's iterations kept the SFT
model as anchor in one variant). The adapter is merged and saved as a plain checkpoint.

Per device (components/training.py): on CUDA the frozen base (and an explicit reference) are
loaded in bf16 with bf16 mixed precision, and the adapter is merged into the fp32 weights;
`dpo.batch_size: auto` picks the per-device batch (components/batching.py).

    python -m components.dpo 1 models/round-0 data/round-1 models/round-1 --sft models/round-0
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

from components import tracking
from components.config import DPO_BATCH_CPU, ConfigError, Params, load_params
from components.data import read_jsonl, write_json
from components.modeling import load, messages, pick_device, setup_runtime
from components.training import (checkpointing, device_batch, last_checkpoint, lora_config,
                                  merge_and_save_full_precision, train_dtype, trainer_precision, work_dir)


def to_preference(rows: list[dict], params: Params) -> list[dict]:
    """TRL's conversational preference format: shared prompt, chosen/rejected assistant turns."""
    p = params.prompt
    return [{"prompt": messages(r["question"], p.system, p.template),
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def to_unpaired(rows: list[dict], params: Params, seed: int) -> list[dict]:
    """TRL's conversational unpaired format. KTOTrainer samples sequentially (its KL estimate
    pairs neighbours in a batch), so the order is shuffled here, seeded, to mix the labels."""
    p = params.prompt
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


def run(params: Params, round_key: str, prev_model: Path, round_dir: Path, out: Path,
        log: tracking.StageLog, sft_model: Path | None = None) -> dict:
    from datasets import Dataset

    cfg, rcfg = params.dpo, params.rounds[round_key].dpo
    setup_runtime(params.runtime.threads)
    device = pick_device(params.runtime.device)
    dtype = train_dtype(device)
    model, tok = load(prev_model, dtype=dtype, device=device)
    ref_model = None
    if rcfg.reference == "sft" and params.rounds[round_key].prev != "0":
        if sft_model is None:
            raise ConfigError("rounds.%s.dpo.reference: 'sft' needs the SFT model path (--sft)" % round_key)
        ref_model, _ = load(sft_model, dtype=dtype, device=device)
        ref_model.eval().requires_grad_(False)
    # a DPO/KTO example is two sequences (chosen + rejected, or the completion + its KL partner)
    batch, accum = device_batch(cfg.batch_size, cfg.grad_accum, model, cfg.max_length, DPO_BATCH_CPU, pairs=True)
    split = [[batch, accum]] if cfg.batch_size == "auto" else []   # auto: part of the run (sft.py says why)
    data_file = round_dir / ("pairs.jsonl" if rcfg.method == "dpo" else "unpaired.jsonl")
    work = work_dir(f"{rcfg.method}-{round_key}", cfg.model_dump(), rcfg.model_dump(), params.prompt.model_dump(),
                    prev_model, data_file, sft_model if ref_model is not None else "", *split)
    resume = last_checkpoint(work)   # a killed earlier attempt of this very run
    common = dict(
        output_dir=str(work), beta=rcfg.beta, learning_rate=rcfg.learning_rate,
        num_train_epochs=rcfg.epochs, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="cosine", max_length=cfg.max_length, seed=rcfg.seed, data_seed=rcfg.seed,
        logging_steps=cfg.logging_steps, report_to="none", **checkpointing(cfg.save_steps),
        activation_checkpointing=False, dataset_num_proc=1, **trainer_precision(device))
    metrics: dict = {"method_kto": float(rcfg.method == "kto"), "reference_sft": float(ref_model is not None),
                     "batch_size": batch, "grad_accum": accum}
    if rcfg.method == "dpo":
        from trl import DPOConfig as Config, DPOTrainer as Trainer

        rows = read_jsonl(round_dir / "pairs.jsonl", required=("question", "chosen", "rejected"))
        data = to_preference(rows, params)
        # RPO: the DPO loss plus an NLL term on the chosen side keeps the policy's likelihood of
        # correct solutions from falling while the margin grows (a known DPO failure on math).
        rpo = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, rcfg.sft_weight]) if rcfg.sft_weight else {}
        args = Config(**common, **rpo)
        metrics["pairs"] = len(rows)
        metrics["sft_weight"] = rcfg.sft_weight
    else:
        from trl import KTOConfig as Config, KTOTrainer as Trainer

        rows = read_jsonl(round_dir / "unpaired.jsonl", required=("question", "completion", "label"))
        data = to_unpaired(rows, params, rcfg.seed)
        dw, uw = class_weights(rows)
        args = Config(**common, desirable_weight=dw, undesirable_weight=uw)
        metrics.update(examples=len(rows), desirable=sum(r["label"] for r in rows), desirable_weight=dw,
                       undesirable_weight=uw)
    trainer = Trainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(data),
                      processing_class=tok, peft_config=lora_config(cfg.lora),
                      callbacks=[tracking.trainer_callback(log)])
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    merge_and_save_full_precision(trainer.model, tok, out, prev_model)
    shutil.rmtree(work, ignore_errors=True)   # kept on failure: the next attempt resumes from it
    metrics["resumed_from_step"] = int(resume.rsplit("-", 1)[1]) if resume else 0
    metrics.update(train_loss=result.training_loss, train_seconds=seconds,
                   examples_per_second=len(rows) * rcfg.epochs / seconds)
    for key, name in (("rewards/accuracies", "reward_accuracy"), ("rewards/margins", "reward_margin"),
                      ("rewards/chosen", "reward_chosen"), ("rewards/rejected", "reward_rejected"),
                      ("kl", "kl")):
        vals = [h[key] for h in history if key in h]
        if vals:
            metrics[name] = vals[-1]
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("round")
    parser.add_argument("prev_model", type=Path)
    parser.add_argument("round_dir", type=Path, help="holds pairs.jsonl (DPO) and unpaired.jsonl (KTO)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--sft", type=Path, default=None, help="the SFT model, for reference: sft")
    args = parser.parse_args()
    params = load_params()
    logged = {"dpo": params.dpo.model_dump(), "round": params.rounds[args.round].dpo.model_dump(),
              "prev": params.rounds[args.round].prev}
    with tracking.stage_run("dpo", logged, round_key=args.round) as log:
        log.tags({"method": params.rounds[args.round].dpo.method,
                  "reference": params.rounds[args.round].dpo.reference})
        metrics = run(params, args.round, args.prev_model, args.round_dir, args.out, log, args.sft)
        log.metrics(metrics)
        write_json(metrics, args.round_dir / "dpo_metrics.json")  # a DVC metric beside MLflow's copy


if __name__ == "__main__":
    from components.entry import run_main

    run_main(main)  # bad input: one line, exit 2; SIGTERM/SIGINT: MLflow run KILLED (see entry.py)
