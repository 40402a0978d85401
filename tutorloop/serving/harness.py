"""lm-evaluation-harness as a second opinion: GSM8K scored by the field's harness, through `tutorloop serve`.

    tutorloop harness --model models:/tutor@champion --task gsm8k --limit 200
    tutorloop harness --model models/base --task gsm8k_cot_zeroshot --chat

Every accuracy the loop reports comes from its own prompt and grader (tutorloop/eval/grading.py);
model cards are scored with EleutherAI's lm-evaluation-harness (`lm-eval`). This runs the
harness's own task definition — its prompt, few-shot format, stop strings and its two answer
filters, `strict-match` (the `#### N` / "The answer is N." the task asks for) and
`flexible-extract` (the last number in the text) — against the checkpoint served by
tutorloop/serving/server.py on loopback (`local-completions`, or `local-chat-completions` with
the model's chat template), and logs both to MLflow as a `harness` run.

Offline: the task's dataset (`openai/gsm8k` on the hub) is replaced by a local GSM8K jsonl: its
first `limit` rows are the test set (the rows `evaluate.gsm8k` scores, so the two figures are
on the same problems) and the `fewshot_pool` rows after them are where few-shot examples are
drawn from, so an example is never the problem itself. Only this module imports `lm_eval`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tutorloop.errors import DataError

# our name -> the harness's task file (lm_eval/tasks/gsm8k/)
TASKS = {"gsm8k": "gsm8k.yaml", "gsm8k_cot": "gsm8k-cot.yaml", "gsm8k_cot_zeroshot": "gsm8k-cot-zeroshot.yaml"}
FILTERS = ("strict-match", "flexible-extract")


@dataclass
class Score:
    """One harness run: exact match under each filter (with Wilson 95% intervals), per problem too."""

    task: str
    n: int
    strict: float
    flexible: float
    fewshot: int
    seconds: float
    samples: list[dict]   # per problem: question, target, the model's response, strict and flexible verdicts

    def metrics(self) -> dict[str, float]:
        from tutorloop.eval.stats import wilson

        out = {"harness.n": self.n, "harness.seconds": self.seconds}
        for name, value in (("strict_match", self.strict), ("flexible_extract", self.flexible)):
            lo, hi = wilson(round(value * self.n), self.n)
            out |= {f"harness.{name}": value, f"harness.{name}_ci95_low": lo, f"harness.{name}_ci95_high": hi}
        return out


def task_config(task: str, test_file: Path, fewshot_file: Path) -> dict:
    """The harness's config of `task` with its dataset replaced by the two local jsonl files."""
    import lm_eval

    if task not in TASKS:
        raise ValueError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    builtin = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / TASKS[task]
    cfg = yaml.safe_load(builtin.read_text())
    cfg.pop("tag", None)   # our copy must not join the harness's `math_word_problems` group
    cfg.update(task=f"tutorloop_{task}", dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": {"train": str(fewshot_file), "test": str(test_file)}},
               training_split="train", fewshot_split="train", test_split="test")
    return cfg


def read_data(gsm8k: Path, limit: int) -> list[dict]:
    """The rows of a GSM8K jsonl, checked before any model loads: a DataError names the file, the
    line and what is wrong (not JSON, no question/answer, no `#### N`), or that it is too short."""
    from tutorloop.data.jsonl import read_jsonl

    rows = []
    for number, row in enumerate(read_jsonl(gsm8k), 1):   # JSON errors name the file and line there
        if not all(isinstance(row.get(k), str) for k in ("question", "answer")):
            raise DataError(f"{gsm8k}:{number}: a GSM8K row needs string fields question and answer")
        if "####" not in row["answer"] and "####" in str(row.get("solution", "")):
            row = {**row, "answer": row["solution"]}   # the loop's own sets: the worked solution carries it
        if "####" not in row["answer"]:
            raise DataError(f"{gsm8k}:{number}: answer has no '#### N' final answer")
        rows.append(row)
    if len(rows) <= limit:
        raise DataError(f"{gsm8k}: {len(rows)} rows, need more than --limit {limit} (the rest are few-shot examples)")
    return rows


def refuse_trained(rows: list[dict], limit: int, project: Path) -> None:
    """A DataError when any of the `limit` rows to score is a problem the workspace trained on
    (its SFT or practice set): the GSM8K recipe's seeds come from GSM8K train, the harness's default
    rows too, and a score on training problems is not a score."""
    from tutorloop.data.jsonl import read_jsonl
    from tutorloop.data.text import normalise

    trained = {normalise(r["question"]) for name in ("sft.jsonl", "practice.jsonl")
               if (project / "data" / "clean" / name).exists()
               for r in read_jsonl(project / "data" / "clean" / name, allow_empty=True)}
    seen = sum(normalise(r["question"]) in trained for r in rows[:limit])
    if seen:
        raise DataError(f"--data: {seen} of the {min(limit, len(rows))} rows to score are problems this workspace "
                        "trained on (data/clean/sft.jsonl, practice.jsonl): score held-out rows, e.g. "
                        "--data data/generated/test.jsonl")


def write_task(task: str, gsm8k: Path, limit: int, fewshot_pool: int, folder: Path) -> str:
    """Write the offline task (its yaml and the two row files) into `folder`; returns its name."""
    rows = read_data(gsm8k, limit)
    folder.mkdir(parents=True, exist_ok=True)
    test, shots = folder / "test.jsonl", folder / "fewshot.jsonl"
    keep = ("question", "answer")
    test.write_text("".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in rows[:limit]))
    shots.write_text("".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in rows[limit:limit + fewshot_pool]))
    cfg = task_config(task, test, shots)
    (folder / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg["task"]


def serve_in_thread(served) -> tuple[str, callable]:
    """Start `served` on a free loopback port; returns (base URL, a function that stops it)."""
    import socket

    import uvicorn

    from tutorloop.serving.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name="harness-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the model server did not start")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)

    return f"http://127.0.0.1:{port}/v1", stop


def evaluate(base_url: str, model: str, tokenizer: str | Path, task: str, gsm8k: Path, workdir: Path, *,
             limit: int = 200, fewshot: int | None = None, fewshot_pool: int = 1000, chat: bool = False,
             concurrency: int = 64, max_gen_toks: int = 256, context: int = 2048) -> Score:
    """Run the harness's `task` on the first `limit` rows of `gsm8k` against the OpenAI-compatible
    server at `base_url` (serving `model`; `tokenizer`: a local folder, for the harness's length
    checks; `context`: the model's). Requests go as text (our server takes text prompts), so the
    harness does not truncate them: a few-shot prompt longer than the context is refused by the
    server (400) and the run fails — use fewer shots. `fewshot`: None = the task's own number."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    name = write_task(task, gsm8k, limit, fewshot_pool, workdir)
    endpoint = "chat/completions" if chat else "completions"
    args = {"model": model, "base_url": f"{base_url.rstrip('/')}/{endpoint}", "tokenizer_backend": "huggingface",
            "tokenizer": str(tokenizer), "tokenized_requests": False, "num_concurrent": concurrency,
            "max_gen_toks": max_gen_toks, "max_length": context, "max_retries": 1, "timeout": 3600}
    start = time.perf_counter()
    out = simple_evaluate(model="local-chat-completions" if chat else "local-completions", model_args=args,
                          tasks=[name], num_fewshot=fewshot, task_manager=TaskManager(include_path=str(workdir),
                                                                                      include_defaults=False),
                          apply_chat_template=chat, fewshot_as_multiturn=chat, log_samples=True,
                          bootstrap_iters=0)
    seconds = time.perf_counter() - start
    res = out["results"][name]
    per_doc: dict[int, dict] = {}   # the harness logs one entry per problem and filter
    for x in out["samples"][name]:
        row = per_doc.setdefault(x["doc_id"], {"question": x["doc"]["question"], "target": x["target"],
                                               "response": (x["resps"] or [[""]])[0][0]})
        row[x.get("filter", "strict-match")] = float(x["exact_match"])
    samples = [per_doc[d] for d in sorted(per_doc)]
    return Score(task=task, n=len(samples), strict=float(res["exact_match,strict-match"]),
                 flexible=float(res["exact_match,flexible-extract"]),
                 fewshot=int(out["configs"][name].get("num_fewshot") or 0), seconds=seconds, samples=samples)
