"""`tutorloop`: the command line (the project's entry point: `tutorloop = tutorloop.cli:app`).

    tutorloop validate                     check params.yaml (every problem, with key and value)
    tutorloop deps --write                 rewrite dvc.yaml's tutorloop/ deps from the import graph (--check: stale?)
    tutorloop doctor                       this machine: CPU, the precision auto resolves to and why
    tutorloop demo                         what `make demo` runs: doctor, then the loop sized for this machine
    tutorloop run                          the loop flow: round 0, every round, the report
    tutorloop run --round 2                round 2 and the rounds it builds on (its prev chain)
    tutorloop report                       the accuracy table of the evaluated checkpoints
    tutorloop schedule --cron "0 3 * * *"  serve the loop on a cron schedule (needs a Prefect server)
    tutorloop recipe gsm8k                 run recipes/gsm8k.yaml's overrides as a DVC experiment
    tutorloop serve --model models:/tutor@champion   an OpenAI-compatible server over the engine
    tutorloop harness --model models/base  lm-evaluation-harness GSM8K through that server, logged to MLflow
    tutorloop heldout --n 400               more held-out problems, disjoint from the workspace's (bigger paired tests)
    tutorloop paired eval/1 eval/2          pass@1 and paired McNemar between scored prediction sets
    tutorloop seeds asdiv --round 1 --seeds 3   one round (and its control) under 3 seeds, the paired test pooled
                                           (--extra extra/heldout.jsonl: also on `tutorloop heldout`'s problems)

A bad params.yaml or recipe (YAML syntax, a bad value, a missing file) is reported as
`tutorloop: <file>:<line>: <problem>` lines on stderr with exit code 2, as the stages do
(tutorloop/runtime/entry.py), never as a traceback.

May import: the whole library, and flows/ (lazily, inside the commands that start a flow or DVC):
the top layer. Never components/ (stages run through DVC).
"""

from tutorloop.cli import inspect, loop, serve  # noqa: F401  (each module registers its commands)
from tutorloop.cli.common import app

# `tutorloop --help` lists the loop's commands first, whatever order the modules registered them in
PANELS = ["Run the loop", "Inspect a workspace", "Serve a checkpoint"]
app.registered_commands.sort(key=lambda c: PANELS.index(c.rich_help_panel))

__all__ = ["app"]
