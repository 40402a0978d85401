"""The accuracy report: one row per evaluated checkpoint (base, SFT, each round), as CSV, PNG and
a rich table, and the comparison of DVC experiments.

`rows` reads metrics/<checkpoint>.json (from `evaluate`) and, when given, the per-problem
predictions in eval/<checkpoint>/ for the paired tests and data/round-<r>/feedback_metrics.json
and preference_metrics.json for each round's practice pass rate and what it trained on (DPO
pairs, KTO or RFT rows: the feedback stage writes pairs for every method, so the pairs count
alone would misdescribe a KTO or RFT round). `write_report` writes accuracy.csv (a DVC plot:
`dvc plots show`) and accuracy.png — what the `report` stage does, reading only its declared
deps (metrics/ and eval/). `table()` renders the same rows for `tutorloop report`, adding the
feedback columns and each checkpoint's stage wall time from MLflow (`stage_minutes`): the CLI is
no stage, so it may read what the stage does not declare (the stage once depended on all of
data/, and re-hashed it for a plot).

Each checkpoint is compared with the base and with the checkpoint before it on the *same*
problems: discordant counts (won/lost) and the exact one-sided McNemar p that it is better —
the test a "round N >= round N-1" claim needs (two Wilson intervals overlap long before a paired
difference stops being significant). No comparison where the problem ids differ. Where
evaluate sampled (`evaluate.maj_k`), pass@1/4/16 and maj@k sit beside greedy pass@1: pass@k is
the ceiling a round built on the student's own samples can reach.

`experiments` and `compare` read `dvc exp show --json` and plot held-out accuracy per checkpoint
for each experiment (e.g. DPO vs KTO), for `tutorloop compare`.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from tutorloop.config import CONTROL
from tutorloop.data.jsonl import read_jsonl
from tutorloop.errors import DataError
from tutorloop.eval.stats import mcnemar_p

COLUMNS = ["checkpoint", "accuracy", "ci95_low", "ci95_high", "n", "strict_accuracy", "gsm8k_accuracy",
           "gsm8k_strict_accuracy", "gsm8k_n", "pairs", "method", "trained_on", "student_rows",
           "practice_pass_rate",
           "won_vs_base", "lost_vs_base", "p_vs_base", "won_vs_prev", "lost_vs_prev", "p_vs_prev",
           "won_vs_sft", "lost_vs_sft", "p_vs_sft", "won_vs_control", "lost_vs_control", "p_vs_control",
           # headroom (evaluate.maj_k samples): pass@k and maj@k; practice pass@k from feedback
           "pass_at_1", "pass_at_4", "pass_at_16", "maj_k", "maj_accuracy",
           "practice_pass_at_1", "practice_pass_at_4", "practice_pass_at_16"]
TAGS = ("base", "sft", "prev", "control")   # what each checkpoint is paired against
PAIRED = [f"{c}_vs_{t}" for t in TAGS for c in ("won", "lost", "p")]


def _order(name: str) -> tuple[int, int, int]:
    """Loop order: base, 0 (SFT), 1, control-1, 2, control-2, ...: a control right after its round."""
    if name.startswith(CONTROL) and name[len(CONTROL):].isdigit():
        return (1, int(name[len(CONTROL):]), 1)
    return (0, 0, 0) if name == "base" else (1, int(name), 0) if name.isdigit() else (2, 0, 0)


def _baselines(names: list[str]) -> dict[str, dict[str, str | None]]:
    """Per checkpoint, the checkpoint it is paired with under each tag: base; SFT (round 0); prev,
    the round before (a control's is its round's: both start there); control, round k's control."""
    out: dict[str, dict[str, str | None]] = {}
    last: str | None = None   # the latest round (not control) seen in loop order
    before: dict[str, str | None] = {}
    for name in names:
        is_control = name.startswith(CONTROL)
        prev = before.get(name[len(CONTROL):]) if is_control else last
        out[name] = {"base": "base", "sft": "0" if name != "base" else None, "prev": prev,
                     "control": None if is_control or f"{CONTROL}{name}" not in names else f"{CONTROL}{name}"}
        if not is_control:
            before[name], last = last, name
    return out


def paired(a: dict[str, bool], b: dict[str, bool]) -> tuple[int, int, float] | None:
    """(won, lost, p) of checkpoint b against a on the problems both were scored on: won = right
    only in b, lost = right only in a, p = exact one-sided McNemar p that b is better. None when
    they share no problem (a changed test set is no paired comparison)."""
    shared = a.keys() & b.keys()
    if not shared:
        return None
    won = sum(b[i] and not a[i] for i in shared)
    lost = sum(a[i] and not b[i] for i in shared)
    return won, lost, mcnemar_p(lost, won)


def correctness(eval_dir: Path, checkpoint: str) -> dict[str, bool] | None:
    """Problem id -> correct from eval_dir/<checkpoint>/predictions.jsonl (None if absent)."""
    path = Path(eval_dir) / checkpoint / "predictions.jsonl"
    return scored(path) if path.exists() else None


def scored(path: Path) -> dict[str, bool]:
    """Problem id -> correct from a predictions.jsonl, or from the one inside a folder."""
    path = Path(path)
    path = path / "predictions.jsonl" if path.is_dir() else path
    return {str(r["id"]): bool(r["correct"]) for r in read_jsonl(path, required=("id", "correct"))}


def scored_joined(spec: str) -> dict[str, bool]:
    """`scored` over one set made of several: "eval/2,extra/eval/2" is a checkpoint scored on the
    held-out set and on more problems drawn after it (`tutorloop heldout`), paired as one set. An
    id in two parts is refused: it would count one problem twice, or two problems as one."""
    joined: dict[str, bool] = {}
    for part in spec.split(","):
        marks = scored(Path(part))
        if clash := sorted(joined.keys() & marks.keys()):
            raise DataError(f"{part}: problem id {clash[0]!r} is in an earlier part of {spec!r} too "
                            f"({len(clash)} shared ids): joined sets must hold different problems")
        joined.update(marks)
    return joined


def rows(metrics_dir: Path, data_dir: Path | None = None, eval_dir: Path | None = None) -> list[dict]:
    """One row per evaluated checkpoint, in loop order: base, 0 (SFT), 1, 2, ...; the feedback
    columns (pairs, practice pass rate) are read from `data_dir` and the paired comparisons from
    `eval_dir`, each only when it is given."""
    out = []
    for path in sorted(Path(metrics_dir).glob("*.json"), key=lambda p: _order(p.stem)):
        m = json.loads(path.read_text())
        g = m.get("gsm8k", {})
        control = path.stem.startswith(CONTROL)
        round_key = path.stem[len(CONTROL):] if control else path.stem
        fb_file = Path(data_dir) / f"round-{round_key}" / "feedback_metrics.json" if data_dir else None
        # a control practised nothing: the round's practice pass rate is not its own
        fb = json.loads(fb_file.read_text()) if fb_file and fb_file.exists() and not control else {}
        pref_file = fb_file.with_name("control_metrics.json" if control else "preference_metrics.json") \
            if fb_file else None
        method, trained, own = _trained(json.loads(pref_file.read_text()) if pref_file and pref_file.exists() else {})
        out.append({"checkpoint": path.stem, "accuracy": m["accuracy"], "ci95_low": m["ci95_low"],
                    "ci95_high": m["ci95_high"], "n": m["n"], "strict_accuracy": m.get("strict_accuracy", ""),
                    "gsm8k_accuracy": g.get("accuracy", ""), "gsm8k_strict_accuracy": g.get("strict_accuracy", ""),
                    "gsm8k_n": g.get("n", ""),
                    "pairs": fb.get("pairs", ""), "method": method, "trained_on": trained, "student_rows": own,
                    "practice_pass_rate": fb.get("practice_pass_rate", ""),
                    **{k: m.get(k, "") for k in ("pass_at_1", "pass_at_4", "pass_at_16")},
                    **_majority(m), **{f"practice_{k}": fb.get(f"practice_{k}", "")
                                       for k in ("pass_at_1", "pass_at_4", "pass_at_16")}})
    for r in out:
        r.update({k: "" for k in PAIRED})
    if eval_dir is not None:
        _pair_all(out, eval_dir)
    return out


def _pair_all(out: list[dict], eval_dir: Path) -> None:
    """Fill each row's won/lost/p against its baselines (`_baselines`) on the problems both share."""
    by_checkpoint = {r["checkpoint"]: correctness(eval_dir, r["checkpoint"]) for r in out}
    against = _baselines([r["checkpoint"] for r in out])
    for r in out:
        mine = by_checkpoint[r["checkpoint"]]
        for tag, other in against[r["checkpoint"]].items():
            theirs = by_checkpoint.get(other) if other and other != r["checkpoint"] else None
            cmp = paired(theirs, mine) if mine is not None and theirs is not None else None
            if cmp:
                r[f"won_vs_{tag}"], r[f"lost_vs_{tag}"], r[f"p_vs_{tag}"] = cmp


def pooled_comparisons(out: Path, n: int, checkpoints: list[str]) -> list[dict]:
    """`tutorloop seeds`' comparisons from out/seed<i>/<checkpoint>.jsonl: checkpoints are [the
    round's start, the round, its control?, SFT ("0") where the round starts later]; the round
    against its start, its control and SFT, the control against the start and SFT, each pooled
    over the n seeds (`stats.pooled_sign_test`)."""
    from tutorloop.eval.stats import pooled_sign_test

    runs = {c: [scored(Path(out) / f"seed{i}" / f"{c}.jsonl") for i in range(n)] for c in checkpoints}
    start, arm, *rest = checkpoints
    control = [c for c in rest if c.startswith(CONTROL)]
    pairs = [(arm, start)] + [(arm, control[0]), (control[0], start)] * bool(control)
    if start != "0" and "0" in runs:   # a later round is also held against SFT
        pairs += [(arm, "0")] + [(control[0], "0")] * bool(control)
    return [{"arm": a, "baseline": b, **pooled_sign_test(runs[b], runs[a])} for a, b in pairs]


def _trained(pref: dict) -> tuple[str, int | str, int | str]:
    """(method, examples it trained on, the student's own solutions among them: RFT) from a
    round's preference_metrics.json: DPO pairs, KTO rows, RFT rows; blanks where it has not trained."""
    if not pref:
        return "", "", ""
    if pref.get("control"):   # control_metrics.json: the teacher's solutions, as many rows as the round's
        return "control", pref.get("examples", ""), ""
    method = "rft" if pref.get("method_rft") else "kto" if pref.get("method_kto") else "dpo"
    return (method, pref.get("pairs" if method == "dpo" else "examples", ""),
            pref.get("student_solutions", "") if method == "rft" else "")


def _trained_cell(r: dict) -> str:
    """'48 pairs' / '96 kto rows' / '149 rft rows (49 own)'; the feedback pairs where the round's
    training metrics are not there (a round not yet trained shows what DPO would get)."""
    if r["method"] == "dpo":
        return f"{r['trained_on']} pairs"
    if r["method"] == "control":
        return f"{r['trained_on']} teacher rows"
    if r["method"]:
        own = r["student_rows"]
        return f"{r['trained_on']} {r['method']} rows" + (f" ({own} own)" if own != "" else "")
    return f"{r['pairs']} pairs" if r["pairs"] != "" else "-"


def _majority(m: dict) -> dict:
    """maj_k and maj@k accuracy from evaluate's metrics (the key names k: maj_at_<k>)."""
    found = [(int(k.rsplit("_", 1)[1]), v) for k, v in m.items() if k.startswith("maj_at_")]
    return {"maj_k": found[0][0], "maj_accuracy": found[0][1]} if found else {"maj_k": "", "maj_accuracy": ""}


def stage_minutes(project: Path) -> dict[str, float]:
    """Wall minutes per checkpoint: the latest finished run of each stage, from MLflow.

    Round 0's time includes base_model, generate and decontaminate as well as SFT. A control's
    training (stage `control`, round tag k) counts for checkpoint control-k, as its evaluate and
    register runs (round tag control-k) do, never for round k.
    """
    db = Path(project) / "mlflow.db"
    if not db.exists():
        return {}
    from mlflow import MlflowClient

    from tutorloop.runtime import tracking

    client = MlflowClient(tracking.tracking_uri(project))
    exp = client.get_experiment_by_name(tracking.experiment_name())
    if exp is None:
        return {}
    latest: dict[tuple[str, str], float] = {}
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=5000):
        stage, key = run.data.tags.get("tutorloop.stage"), run.data.tags.get("tutorloop.round", "0")
        key = CONTROL + key if stage == "control" else key
        if stage and stage != "report" and run.info.end_time and (key, stage) not in latest:
            latest[(key, stage)] = (run.info.end_time - run.info.start_time) / 60000
    minutes: dict[str, float] = {}
    for (key, _), m in latest.items():
        minutes[key] = minutes.get(key, 0.0) + m
    return minutes


def label(checkpoint: str) -> str:
    """How a checkpoint is named in tables and plots."""
    if checkpoint.startswith(CONTROL):
        return f"control {checkpoint[len(CONTROL):]}"
    return {"base": "base", "0": "round 0 (SFT)"}.get(checkpoint, f"round {checkpoint}")


def table(metrics_dir: Path, minutes: dict[str, float] | None = None, data_dir: Path | None = None,
          eval_dir: Path | None = None):
    """A rich Table of accuracy per checkpoint (with pairs and minutes where known); the feedback
    columns come from `data_dir`, by default the `data` folder beside `metrics_dir`."""
    from rich import box
    from rich.table import Table

    minutes = minutes or {}
    # Compact enough for an 80-column terminal (make demo's log, CI): CIs in brackets, no grid.
    t = Table(title="tutorloop: greedy pass@1 per checkpoint", box=box.SIMPLE_HEAD, padding=(0, 1))
    t.add_column("checkpoint", no_wrap=True)
    for col in ("held-out [95% CI]", "GSM8K [95% CI]", "vs base", "vs SFT", "vs prev", "vs control", "trained on",
                "pass", "minutes"):
        t.add_column(col, justify="right", no_wrap=True)

    def pct(m: dict) -> str:
        return f"{m['accuracy']:.1%} [{m['ci95_low']:.0%},{m['ci95_high']:.0%}]"

    def vs(r: dict, tag: str) -> str:
        return f"+{r[f'won_vs_{tag}']}/-{r[f'lost_vs_{tag}']} p={r[f'p_vs_{tag}']:.2g}" if r[f"p_vs_{tag}"] != "" else "-"

    sizes = set()
    root = Path(metrics_dir).parent
    data = rows(metrics_dir, data_dir or root / "data", eval_dir or root / "eval")
    headroom = any(r["maj_k"] != "" for r in data)
    if headroom:   # only when evaluate sampled (evaluate.maj_k): pass@k is the ceiling of a round
        t.add_column("pass@1/4/16 · maj@k", justify="right", no_wrap=True)
    for r in data:
        m = json.loads((Path(metrics_dir) / f"{r['checkpoint']}.json").read_text())
        sizes.add(f"held-out n={m['n']}" + (f", GSM8K n={m['gsm8k']['n']}" if "gsm8k" in m else ""))
        t.add_row(label(r["checkpoint"]), pct(m), pct(m["gsm8k"]) if "gsm8k" in m else "-",
                  vs(r, "base"), vs(r, "sft"), vs(r, "prev"), vs(r, "control"), _trained_cell(r),
                  f"{r['practice_pass_rate']:.0%}" if r["practice_pass_rate"] != "" else "-",
                  f"{minutes[r['checkpoint']]:.1f}" if r["checkpoint"] in minutes else "-",
                  *([_headroom(r)] if headroom else []))
    t.caption = (f"{'; '.join(sorted(sizes))}. pass: practice samples judged right. trained on: the round's "
                 "examples (RFT: the student's own solutions in brackets).\n"
                 "vs: held-out problems won/lost against base / SFT / the previous round / the round's control "
                 "(its training on the teacher's solutions alone), exact McNemar p (one-sided).\n"
                 "minutes: wall time of the stages that made and scored the checkpoint (MLflow).")
    return t


def _headroom(r: dict) -> str:
    if r["maj_k"] == "":
        return "-"
    ks = "/".join(f"{r[f'pass_at_{k}']:.0%}" if r[f"pass_at_{k}"] != "" else "-" for k in (1, 4, 16))
    return f"{ks} · {r['maj_accuracy']:.0%}@{r['maj_k']}"


def write_report(metrics_dir: Path, out_dir: Path, eval_dir: Path | None = None) -> list[dict]:
    """Write out_dir/accuracy.csv (every column of `rows`) and out_dir/accuracy.png (held-out
    accuracy with its 95% CI per checkpoint, GSM8K beside it); the rows written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rows(metrics_dir, eval_dir=eval_dir)
    if not data:
        raise FileNotFoundError(f"no metrics in {metrics_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "accuracy.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(data)
    xs = list(range(len(data)))
    acc = [r["accuracy"] for r in data]
    err = [[a - r["ci95_low"] for a, r in zip(acc, data)], [r["ci95_high"] - a for a, r in zip(acc, data)]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(xs, acc, yerr=err, marker="o", capsize=4, label="held-out (95% CI)")
    gsm = [(x, r["gsm8k_accuracy"]) for x, r in zip(xs, data) if r["gsm8k_accuracy"] != ""]
    if gsm:
        ax.plot(*zip(*gsm), marker="s", linestyle="--", label="GSM8K")
    ax.set_xticks(xs, [label(r["checkpoint"]) for r in data])
    ax.set_ylabel("pass@1 accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=120)
    plt.close(fig)
    return data


_ROUND_COST = re.compile(r"data/round-(\d+)/(practice|preference)_metrics\.json")


def experiments(exp_show: list | dict) -> list[dict]:
    """Flatten `dvc exp show --json` into [{name, method, accuracy: {checkpoint: (acc, lo, hi)},
    minutes: {round: practice + training minutes}}], so methods are compared on what they cost too.

    Walks the output instead of indexing fixed keys: its nesting (baseline -> experiments ->
    revs) has moved between DVC releases, but every experiment is a node whose `data` holds
    `metrics` and `params`.
    """
    found: list[dict] = []

    def walk(node, name=None, is_exp=False):
        if isinstance(node, list):
            for v in node:
                walk(v, name, is_exp)
            return
        if not isinstance(node, dict):
            return
        name = node.get("name") or name or node.get("rev")
        data = node.get("data")
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            acc, minutes = {}, {}
            for path, m in data["metrics"].items():
                stem = Path(path).stem
                d = (m or {}).get("data") or {}
                if path.startswith("metrics/") and "accuracy" in d:
                    acc[stem] = (d["accuracy"], d.get("ci95_low", d["accuracy"]), d.get("ci95_high", d["accuracy"]))
                # A round's cost: the student's sampling plus its training (a budget is compared in minutes)
                cost = _ROUND_COST.fullmatch(path)
                seconds = d.get("seconds" if cost and cost[2] == "practice" else "train_seconds")
                if cost and isinstance(seconds, (int, float)):
                    minutes[cost[1]] = minutes.get(cost[1], 0.0) + seconds / 60
            params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
            rounds = params.get("rounds") or {}
            # `rounds.k.preference` since 2026-12; experiments recorded before the rename say `dpo`
            method = "/".join(f"{k}:{(r.get('preference') or r.get('dpo') or {}).get('method', '?')}"
                              for k, r in sorted(rounds.items()))
            if acc:
                found.append({"name": str(name or "workspace"), "method": method, "accuracy": acc,
                              "minutes": minutes, "is_exp": is_exp})
        for k, v in node.items():
            if k != "data":
                walk(v, None, is_exp or k == "experiments")

    walk(exp_show)
    unique, seen = [], set()
    # named experiments first: the workspace and the branch tip repeat one of them
    for e in sorted(found, key=lambda e: not e["is_exp"]):
        del e["is_exp"]
        key = (e["method"], tuple(sorted(e["accuracy"].items())))
        if key not in seen:
            seen.add(key)
            unique.append(e)
    return unique


def compare(exps: list[dict], out: Path) -> Path:
    """One figure: held-out accuracy per checkpoint for each experiment (e.g. DPO vs KTO)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not exps:
        raise ValueError("no experiments with metrics: run `dvc exp run -S ...` first")
    checkpoints = sorted({c for e in exps for c in e["accuracy"]}, key=_order)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, e in enumerate(exps):
        xs = [j + (i - (len(exps) - 1) / 2) * 0.06 for j, c in enumerate(checkpoints) if c in e["accuracy"]]
        pts = [e["accuracy"][c] for c in checkpoints if c in e["accuracy"]]
        ax.errorbar(xs, [p[0] for p in pts], yerr=[[p[0] - p[1] for p in pts], [p[2] - p[0] for p in pts]],
                    marker="o", capsize=3, label=f"{e['name']} ({e['method']})")
    ax.set_xticks(range(len(checkpoints)), [label(c) for c in checkpoints])
    ax.set_ylabel("held-out pass@1 (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "method", "checkpoint", "accuracy", "ci95_low", "ci95_high", "round_minutes"])
        for e in exps:
            for c in checkpoints:
                if c in e["accuracy"]:
                    spent = e["minutes"].get(c)
                    w.writerow([e["name"], e["method"], c, *e["accuracy"][c], "" if spent is None else round(spent, 2)])
    return out
