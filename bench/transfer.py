"""Task transfer on real data: does a student distilled on one task fine-tune well on tasks it never saw?

Source: the VADER movie task (``xdray data samples``). Teacher MiniLM-L6 fine-tuned on it, transfer corpus
labelled, and a 3-layer student of the teacher's width (384 hidden, 12 heads, FFN 1536; initialised from
MiniLM's blocks as the paper initialises from MiniLM) distilled with the paper's schedule.
Targets (``xdray data transfer-sets``): WordNet 3.0 verb supersenses (15 classes, definitions) and VADER tweets
as regression (mean human rating; Pearson). Arms, each fine-tuned with ``xdray transfer`` on the same splits:
  distilled   the distilled student;
  random      the same architecture, random weights;
  truncated   MiniLM-L6 truncated to the student's 3 blocks (evenly spaced, top kept), not distilled;
  teacher     the MiniLM-L6 backbone itself (6 layers).
Prints one JSON line per arm and task (mean ± std over seeds) and writes ``transfer.md`` (the paper's layout:
params, speedup at batch 1 on one CPU thread, one column per task, average). Finished runs are reused.

    python bench/transfer.py [--quick] [--seeds 3] [--out outputs/bench/transfer[-quick]]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import psutil

# the source-task teacher/label/distill runs, as the quality bench makes them
from quality import PRETRAINED_LR, base_config, out_dir, run

from xdray.common.hf import load_classifier
from xdray.common.latency import cpu_latency_ms
from xdray.config import StudentConfig
from xdray.data.samples import prepare_samples
from xdray.data.transfer_sets import prepare_transfer_sets
from xdray.distill.student import build_student

STUDENT = {"layers": 3, "hidden": 384, "heads": 12, "intermediate": 1536}
TASKS = {"wordnet_verbs": "classification", "vader_tweets": "regression"}
ARMS = ("distilled", "random", "truncated", "teacher")


def source_student(samples: Path, out: Path, quick: bool) -> Path:
    """Teacher → label → distill on the movie task; returns the distilled student's directory."""
    raw = base_config(samples, out, quick)
    raw["distill"]["student"] = STUDENT | {"init": f"pretrained:{samples / 'minilm-l6'}", "embeddings": "copy"}
    raw["distill"]["lr"] = PRETRAINED_LR
    for step in ("teacher", "label", "distill"):
        summary = run(raw, step)
    return Path(summary["model_dir"])


def baseline(samples: Path, out: Path, init: str) -> Path:
    """The student's architecture from random weights, or MiniLM's blocks without distillation."""
    dest = out / f"{init}-student"
    if not (dest / "config.json").exists():
        spec = StudentConfig(**STUDENT, init="random" if init == "random" else f"pretrained:{samples / 'minilm-l6'}",
                             embeddings="random" if init == "random" else "copy")
        minilm, tokenizer = load_classifier(str(samples / "minilm-l6"), num_labels=2)
        build_student(spec, minilm, 2, seed=0).save_pretrained(dest, safe_serialization=True)
        tokenizer.save_pretrained(dest)
    return dest


def transfer(student: Path, sets: Path, out: Path, task: str, seed: int, quick: bool) -> dict:
    raw = {
        "output_dir": str(out), "seed": seed,
        "mlflow": {"tracking_uri": f"sqlite:///{out.parents[2] / 'mlflow.db'}", "experiment": "xdray-bench-transfer"},
        "transfer": {
            "student": str(student), "epochs": 4 if quick else 5, "patience": 2, "lr": 1.0e-4, "batch_size": 16,
            "workers": 2, "cpus_per_worker": 1, "deepspeed": {"zero_stage": 2},
            "tasks": [{"name": task, "type": TASKS[task], "max_length": 64,
                       "max_train_rows": 2000 if quick else None,
                       **{role: str(sets / task / f"{role}.tsv") for role in ("train", "dev", "test")}}],
        },
    }
    return run(raw, "transfer")["tasks"][task]


def wait_for_idle_cpu(busy_percent: float = 10.0, seconds: float = 180.0) -> float:
    """Wait, at most ``seconds``, until the machine's CPU use over one second is under ``busy_percent``: what
    outlives the last Ray job (raylets and workers shutting down) would slow the arms timed first. Returns the
    last reading, printed with the figures."""
    deadline = time.monotonic() + seconds
    while (busy := psutil.cpu_percent(interval=1.0)) >= busy_percent and time.monotonic() < deadline:
        pass
    return busy


def quiet_latency(students: dict[str, Path], sets: Path, per_task: int = 100, rounds: int = 3) -> dict[str, float]:
    """CPU ms per sentence (batch 1, 1 thread) of each arm's starting checkpoint (its fine-tuned models differ
    only in the head's output size) on the tasks' first test sentences, measured back to back on an idle machine
    once all training is over: the figure each run records is taken right after its job and moves with the
    machine's load. The fastest of ``rounds`` rounds, the arms' order rotated each round so none always goes first."""
    texts = []
    for task in TASKS:
        with open(sets / task / "test.tsv", newline="", encoding="utf-8") as f:
            texts += [row["text"] for _, row in zip(range(per_task), csv.DictReader(f, delimiter="\t"))]
    print(f"[bench] CPU {wait_for_idle_cpu():.0f}% busy before timing latency", flush=True)
    arms = list(students)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for r in range(rounds):
        for arm in arms[r % len(arms):] + arms[:r % len(arms)]:
            times[arm].append(cpu_latency_ms(students[arm], texts, 64))
    return {arm: round(min(t), 3) for arm, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 train rows per task, 4 epochs, 1 seed")
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default outputs/bench/transfer (outputs/bench/transfer-quick with --quick)")
    parser.add_argument("--samples", type=Path, default=Path("data/samples"))
    parser.add_argument("--sets", type=Path, default=Path("data/transfer"))
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    out = out_dir(args.out, "transfer", args.quick)
    samples, sets = args.samples.resolve(), args.sets.resolve()
    prepare_samples(samples)
    prepare_transfer_sets(sets)
    students = {"distilled": source_student(samples, out / "source", args.quick),
                "random": baseline(samples, out, "random"), "truncated": baseline(samples, out, "truncated"),
                "teacher": samples / "minilm-l6"}
    # seeds outermost: an interrupted run (finished runs are reused) has every arm at the same seeds so far
    results: dict[tuple[str, str], list[dict]] = {(arm, task): [] for arm in ARMS for task in TASKS}
    for seed in range(seeds):
        for arm, task in results:
            results[arm, task].append(transfer(students[arm], sets, out / arm / task / f"seed{seed}", task, seed,
                                               args.quick))
    latency = quiet_latency(students, sets)
    rows = []
    for (arm, task), runs in results.items():
        scores = [r["test"]["score"] for r in runs]
        row = {"arm": arm, "task": task, "metric": runs[0]["metric"], "mean": round(statistics.mean(scores), 4),
               "std": round(statistics.stdev(scores), 4) if len(scores) > 1 else 0.0,
               "params": runs[0]["params"]["total"], "latency_ms": latency[arm],
               "seeds": seeds}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "transfer.md").write_text(markdown(rows, args.quick, seeds))
    print(f"table: {out / 'transfer.md'}", file=sys.stderr)
    return 0


def markdown(rows: list[dict], quick: bool, seeds: int) -> str:
    teacher_ms = next(r["latency_ms"] for r in rows if r["arm"] == "teacher")
    lines = ["| arm | params | speedup | " + " | ".join(f"{t} ({TASKS[t]})" for t in TASKS) + " | average |",
             "|---|---|---|" + "---|" * len(TASKS) + "---|"]
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        ms = mine[0]["latency_ms"]
        cells = [f"{r['mean'] * 100:.1f} ± {r['std'] * 100:.1f} ({r['metric']})" for r in mine]
        average = statistics.mean(r["mean"] for r in mine) * 100
        lines.append(f"| {arm} | {mine[0]['params'] / 1e6:.1f}M | {teacher_ms / ms:.1f}x | " + " | ".join(cells)
                     + f" | {average:.1f} |")
    note = (f"quick: 2,000 train rows per task, 4 epochs, {seeds} seed(s)" if quick
            else f"{seeds} seed{'s' if seeds > 1 else ''}, full splits, 5 epochs")
    return "\n".join(lines) + f"\n\n({note}; speedup = teacher ms / arm ms per sentence, batch 1, 1 CPU thread)\n"


if __name__ == "__main__":
    sys.exit(main())
