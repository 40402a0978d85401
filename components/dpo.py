"""Stage `dpo@r`: preference learning on the round's pairs -> models/round-r.

TRL `DPOTrainer` with a *fresh* LoRA adapter on the merged round r-1 model and `ref_model=None`:
with PEFT, TRL uses the adapter-disabled model as the reference, which is then exactly round r-1.
(Re-using an adapter trained in an earlier round would make the reference drift from r-1: the
PEFT pitfall this avoids.) The adapter is merged and saved as a plain checkpoint.

    python -m components.dpo 1 models/round-0 data/round-1/pairs.jsonl models/round-1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from components import tracking
from components.config import Params, load_params
from components.data import read_jsonl
from components.modeling import load, merge_and_save, messages, pick_device, setup_runtime
from components.sft import lora_config, trainer_precision


def to_preference(rows: list[dict], params: Params) -> list[dict]:
    """TRL's conversational preference format: shared prompt, chosen/rejected assistant turns."""
    p = params.prompt
    return [{"prompt": messages(r["question"], p.system, p.template),
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def run(params: Params, round_key: str, prev_model: Path, pairs_file: Path, out: Path,
        log: tracking.StageLog) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    cfg, rcfg = params.dpo, params.rounds[round_key].dpo
    rows = read_jsonl(pairs_file, required=("question", "chosen", "rejected"))
    setup_runtime(params.runtime.threads)
    device = pick_device(params.runtime.device)
    model, tok = load(prev_model, device=device)
    work = Path(tempfile.mkdtemp(prefix="dpo-"))
    args = DPOConfig(
        output_dir=str(work), beta=rcfg.beta, learning_rate=rcfg.learning_rate,
        num_train_epochs=rcfg.epochs, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="cosine", max_length=cfg.max_length, seed=rcfg.seed, data_seed=rcfg.seed,
        logging_steps=cfg.logging_steps, save_strategy="no", report_to="none",
        activation_checkpointing=False, dataset_num_proc=1, **trainer_precision(device))
    try:
        trainer = DPOTrainer(model=model, ref_model=None, args=args,
                             train_dataset=Dataset.from_list(to_preference(rows, params)),
                             processing_class=tok, peft_config=lora_config(cfg.lora),
                             callbacks=[tracking.trainer_callback(log)])
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
        history = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
        merge_and_save(trainer.model, tok, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics = {"train_loss": result.training_loss, "train_seconds": seconds, "pairs": len(rows),
               "pairs_per_second": len(rows) * rcfg.epochs / seconds}
    if history:
        last = history[-1]
        metrics.update({"reward_accuracy": last["rewards/accuracies"],
                        "reward_margin": last.get("rewards/margins", 0.0)})
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("round")
    parser.add_argument("prev_model", type=Path)
    parser.add_argument("pairs", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    params = load_params()
    logged = {"dpo": params.dpo.model_dump(), "round": params.rounds[args.round].dpo.model_dump(),
              "prev": params.rounds[args.round].prev}
    with tracking.stage_run("dpo", logged, round_key=args.round) as log:
        log.metrics(run(params, args.round, args.prev_model, args.pairs, args.out, log))


if __name__ == "__main__":
    main()
