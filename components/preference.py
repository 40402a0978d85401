"""Stage `preference@r`: the round's learning on its feedback -> models/round-r.

`rounds.r.preference.method` picks the objective: `dpo` (TRL's DPOTrainer on pairs.jsonl, RPO
with `sft_weight` > 0) or `kto` (KTOTrainer on unpaired.jsonl), each on a fresh LoRA adapter
over the merged round r-1 model, with round r-1 (or, `reference: sft`, models/round-0) as the
reference; or `rft` (the SFT trainer on rft.jsonl, from round r-1 or, `start: sft`, from
models/round-0). The adapter is merged and saved as a plain checkpoint (tutorloop/train/preference.py).
This stage was called `dpo@r` before 2026-12 (`dvc repro dpo@2` is now `dvc repro preference@2`).

    python -m components.preference 1 models/round-0 data/round-1 models/round-1 --sft models/round-0
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.data.jsonl import write_json
from tutorloop.hardware import resolve_runtime
from tutorloop.runtime.distributed import is_main
from tutorloop.runtime.stage import Arg, stage
from tutorloop.runtime.tracking import trainer_callback
from tutorloop.train.preference import train_preference


@stage("preference", Arg("round"), Arg("prev_model", Path),
       Arg("round_dir", Path, "holds pairs.jsonl (DPO), unpaired.jsonl (KTO) and rft.jsonl (RFT)"), Arg("out", Path),
       Arg("--sft", Path, "the SFT model, for reference: sft"), round_arg="round",
       distributed_training=True,
       logged=lambda params, args: {"preference": params.preference.model_dump(),
                                    "round": params.rounds[args.round].preference.model_dump(),
                                    "prev": params.rounds[args.round].prev})
def main(params, args, log) -> dict:
    rcfg = params.rounds[args.round].preference
    # an rft round has no reference model (RftRound has no such key): its tag says none
    log.tags({"method": rcfg.method, "reference": "none" if rcfg.method == "rft" else rcfg.reference})
    # resolved once here (threads, device, precision) and handed down: the library never re-resolves
    metrics = train_preference(params, args.round, args.prev_model, args.round_dir, args.out,
                               [trainer_callback(log)], args.sft, runtime=resolve_runtime(params.runtime))
    if is_main():   # under accelerate, rank 0 writes (tutorloop/runtime/distributed.py)
        write_json(metrics, args.round_dir / "preference_metrics.json")  # a DVC metric beside MLflow's copy
    return metrics


if __name__ == "__main__":
    main()
