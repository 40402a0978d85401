"""The one stage runner: what every `components/<stage>.py` shares, so a stage file holds only
its arguments and the call into the library.

    @stage("practice", Arg("round"), Arg("model", Path), ..., round_arg="round",
           logged=lambda params, args: {...})
    def main(params, args, log) -> dict: ...     # returns the metrics to log (or None)

    if __name__ == "__main__":
        main()

`main(argv=None)` then parses the command line (the module docstring's first line is `--help`'s
description), loads and validates params.yaml, opens the stage's MLflow run (nested under the
round's parent run, KILLED on SIGINT/SIGTERM, FAILED on an exception), calls the body, logs the
metrics it returns, and ends the process as `tutorloop.runtime.entry.run_main` says: bad input is
one line per problem and exit 2, a stop dies by its signal (130 / 143).

A training stage (`distributed=True`: sft, preference, control) under `training.launcher:
accelerate` relaunches itself under `accelerate launch` before any run opens; of its ranks only
the main one opens the MLflow run (tutorloop/runtime/distributed.py).

Debug a stage without DVC or Prefect: `python -m components.practice 1 models/round-0 ...` from
the project root, or call `main([...])` from a test or a debugger (TUTORLOOP_TRACKING=off skips
MLflow).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable

from tutorloop.config import Params, load_params
from tutorloop.runtime import distributed, tracking
from tutorloop.runtime.entry import run_main


@dataclass(frozen=True)
class Arg:
    """One command-line argument: `name` (positional) or `--name` (an option, default None)."""

    name: str
    type: Callable[[str], Any] = str
    help: str | None = None

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        extra = {"default": None} if self.name.startswith("--") else {}
        parser.add_argument(self.name, type=self.type, help=self.help, **extra)


Body = Callable[[Params, argparse.Namespace, tracking.StageLog], "dict | None"]


def stage(name: str, *args: Arg, round_arg: str | None = None, round_key: str | None = None,
          logged: Callable[[Params, argparse.Namespace], dict] | None = None, tracked: bool = True,
          needs_params: bool = True, distributed_training: bool = False):
    """Turn `body(params, args, log) -> metrics` into the stage's `main(argv=None)`.

    `round_arg`: the argument naming the round/checkpoint (the MLflow run is `name@<it>`);
    `round_key`: a fixed one (sft is round 0). `logged`: the params the run records (default:
    the section called `name`). `tracked=False`: no MLflow run (the inputs snapshot runs on every
    repro); `needs_params=False`: the body gets None for params (the report reads only files);
    `distributed_training`: the stage trains, and runs on `training.processes` under accelerate.
    """
    def wrap(body: Body) -> Callable[[list[str] | None], None]:
        module = sys.modules[body.__module__]
        doc = (module.__doc__ or name).strip().splitlines()[0]
        # under `python -m components.x` the module is __main__; its spec keeps the real name
        module_name = getattr(module.__spec__, "name", None) or body.__module__
        prog = f"python -m {module_name}"

        def main(argv: list[str] | None = None) -> None:
            def go() -> None:
                parser = argparse.ArgumentParser(prog=prog, description=doc)
                for arg in args:
                    arg.add_to(parser)
                ns = parser.parse_args(argv)
                params = load_params() if needs_params else None
                if distributed_training and _relaunch(params, module_name, argv):
                    return
                if not tracked or (distributed_training and not distributed.is_main()):
                    # an untracked stage, or a rank other than the main one: it trains, logs nothing
                    body(params, ns, tracking.StageLog(None))
                    return
                recorded = logged(params, ns) if logged else _section(params, name)
                key = getattr(ns, round_arg) if round_arg else round_key
                with tracking.stage_run(name, recorded, round_key=key) as log:
                    metrics = body(params, ns, log)
                    if metrics:
                        log.metrics(metrics)   # the numbers; the words (precision, backend, attention) as tags
                        log.tags({k: v for k, v in metrics.items() if isinstance(v, str)})

            run_main(go)

        main.__doc__ = body.__doc__
        main.body = body  # the undecorated stage, for tests that bring their own params and log
        return main

    return wrap


def _relaunch(params: Params, module_name: str, argv: list[str] | None) -> bool:
    """Under `training.launcher: accelerate`, outside a launch: become `accelerate launch` of this
    stage (exec; returns only in tests that replace the exec). False = train in this process."""
    training = params.training
    if training.launcher != "accelerate" or distributed.launched():
        return False
    if training.processes * training.machines == 1 and not training.accelerate_config:
        return False   # one process, plain DDP: nothing to launch (torchrun's path wants two or more)
    from tutorloop.hardware import pick_device

    distributed.relaunch_under_accelerate(
        module_name, list(sys.argv[1:] if argv is None else argv), processes=training.processes,
        machines=training.machines, config_file=training.accelerate_config,
        cpu=pick_device(params.runtime.device) == "cpu")
    return True


def _section(params: Params | None, name: str) -> dict:
    if params is None:
        return {}
    section = getattr(params, name, None) or getattr(params, name + "_", None)
    return section.model_dump() if section is not None else {}
