"""Stage `control@k`: round k's training on the teacher's solutions alone -> models/control-k.

What a round adds through the student's own samples is only visible against a twin that trains
the same way without them: the same starting checkpoint (rounds.k.prev, or the SFT model where
an RFT round starts there), method's step, batch, seed and number of rows and updates, on the
teacher's solutions of the round's practice problems (rft.jsonl's teacher rows, repeated to the
round's row count; tutorloop/train/preference.py `_control_data`). Evaluated and registered as
checkpoint `control-k`, never a champion. On for the rounds listed in params.yaml `controls`
(each costs a round's training time).

    python -m components.control 1 models/round-0 data/round-1 models/control-1 --sft models/round-0
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.data.jsonl import write_json
from tutorloop.hardware import resolve_runtime
from tutorloop.runtime.distributed import is_main
from tutorloop.runtime.stage import Arg, stage
from tutorloop.runtime.tracking import trainer_callback
from tutorloop.train.preference import train_preference


@stage("control", Arg("round"), Arg("prev_model", Path, "the checkpoint round k starts from"),
       Arg("round_dir", Path, "round k's folder: rft.jsonl (the teacher's solutions) and the round's rows"),
       Arg("out", Path), Arg("--sft", Path, "the SFT model, where the round starts from it"), round_arg="round",
       distributed_training=True,
       logged=lambda params, args: {"preference": params.preference.model_dump(),
                                    "round": params.rounds[args.round].preference.model_dump(),
                                    "prev": params.rounds[args.round].prev})
def main(params, args, log) -> dict:
    log.tags({"method": params.rounds[args.round].preference.method, "control": "teacher-only"})
    metrics = train_preference(params, args.round, args.prev_model, args.round_dir, args.out,
                               [trainer_callback(log)], args.sft, control=True,
                               runtime=resolve_runtime(params.runtime))   # resolved once, handed down
    if is_main():   # under accelerate, rank 0 writes (tutorloop/runtime/distributed.py)
        write_json(metrics, args.round_dir / "control_metrics.json")   # a DVC metric beside MLflow's copy
    return metrics


if __name__ == "__main__":
    main()
