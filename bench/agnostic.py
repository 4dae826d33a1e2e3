"""Task transfer for task-agnostic distillation, measured as the paper measures it: one student per source task,
distilled over a general corpus, then fine-tuned on tasks it never saw.

Sources (``xdray study``, ``study.sources``): the VADER movie sentiment task (``xdray data samples``) and KJV↔WEB
Bible paraphrase detection (``xdray data paraphrase``, a sentence-pair task). Corpus: the general English corpus
(``xdray data general-corpus``, 387k sentences, every target's dev/test held out); the Bible source reads the
same corpus as pairs, each sampled sentence with its nearest neighbour (``--pairs``, ``study.transfer_pairs``).
Targets, each fine-tuned with
``xdray transfer``: WordNet verb supersenses, VADER tweet ratings (regression, Pearson), SpamAssassin spam,
WNUT-16 NER (entity F1) and the paraphrase task (not for the Bible source: it is its own task).
Arms, same targets, splits, seeds and fine-tuning settings:
  distilled/<source>  the student distilled on that source (the paper's schedule over the corpus, then labels);
  undistilled         the same architecture as initialised (MiniLM's blocks, not distilled);
  random              the same architecture, random weights;
  teacher             the teacher's backbone fine-tuned directly.
Profiles:
  cpu  2 cores, hours: the MiniLM-L6 teacher (MPNet-base does not fit: see docs/benchmarks.md), 20,000 corpus
       sentences, a 3-layer H384 student from MiniLM's blocks 1, 3, 5, targets at ≤ 1,000 train rows, 3 epochs;
  gpu  one H100/H200: the MPNet-base teacher, the whole corpus, an L6-H384 student (all of MiniLM-L6), bf16,
       full target splits.
Every finished fine-tune is one line of ``--results`` (default ``bench/results/agnostic-<profile>.jsonl``, kept
in git), and a rerun skips what is there: the profile spans sessions on machines that keep nothing else. A
distilled arm needs its source's whole study (teacher, labels, student) in one session, so ``--arms`` runs part of
a profile: ``--arms baselines`` run by run, ``--arms distilled/movies`` one source's study and its seeds.
Prints one JSON line per arm and task (``arm``, ``source``, ``task``, ``metric``, ``mean``, ``std``, ``params``)
and writes ``agnostic-<profile>.md`` (params, speedup, one column per target, average) next to the results.

    python bench/agnostic.py --profile cpu|gpu [--seeds 3] [--arms all] [--data data] [--out DIR] [--results FILE]
    python bench/agnostic.py --profile cpu --seeds 1 --table-only   # what is recorded so far, seed 0 only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from quality import run
from transfer import wait_for_idle_cpu

from xdray.common.files import read_summary
from xdray.common.latency import cpu_latency_ms
from xdray.common.tracking import Tracker, tracking_uri
from xdray.config import StudentConfig, XdrayConfig, load_raw, validate_config

SOURCES = ("movies", "bible")
TARGETS = ("wordnet_verbs", "vader_tweets", "spam", "wnut16", "paraphrase")
BASELINES = ("undistilled", "random", "teacher")
STUDY_JOB = Path(__file__).resolve().parents[1] / "jobs" / "study.yaml"
OWN_TASK = {"bible": "paraphrase"}
"""The target that is a source's own task: no transfer, left out for it (``xdray study`` does the same)."""


@dataclass(frozen=True)
class Profile:
    teacher: str  # minilm | mpnet
    student: dict
    corpus_rows: int | None  # general-corpus sentences labelled (a fixed-seed sample); None: all
    source_rows: int | None  # source-task train rows (teacher, label stage)
    target_rows: int | None  # target train rows per fine-tune
    epochs: int  # per fine-tune and per distillation stage
    hidden_epochs: int  # of the hidden-state stage over the corpus (patience 1)
    trainer: dict = field(default_factory=dict)
    label: dict = field(default_factory=dict)


MINILM_BLOCKS = {"hidden": 384, "heads": 12, "intermediate": 1536, "embeddings": "copy"}
PROFILES = {
    "cpu": Profile("minilm", {"layers": 3, "init_layers": [1, 3, 5], **MINILM_BLOCKS}, 20_000, 4_000, 1_000, 3, 2,
                   {"workers": 2, "cpus_per_worker": 1, "deepspeed": {"zero_stage": 2, "precision": "fp32"}},
                   {"actors": 2, "cpus_per_actor": 1}),
    "gpu": Profile("mpnet", {"layers": 6, **MINILM_BLOCKS}, None, None, None, 3, 3,
                   {"workers": 1, "cpus_per_worker": 8, "use_gpu": True,
                    "deepspeed": {"zero_stage": 2, "precision": "bf16"}},
                   {"actors": 1, "cpus_per_actor": 8, "gpus_per_actor": 1, "precision": "bf16", "batch_size": 512}),
}


@dataclass(frozen=True)
class Data:
    """Where ``xdray data`` put each set (``--data``; ``jobs/study.yaml`` names them under ``data/``)."""

    root: Path

    @property
    def minilm(self) -> Path:
        return self.root / "samples" / "minilm-l6"

    def teacher(self, profile: Profile) -> Path:
        return self.minilm if profile.teacher == "minilm" else self.root / "teachers" / "mpnet-base"

    def rebase(self, value):
        """``jobs/study.yaml``'s ``data/...`` paths (and ``pretrained:data/...``) under ``root``."""
        if isinstance(value, dict):
            return {k: self.rebase(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.rebase(v) for v in value]
        if isinstance(value, str):
            for prefix in ("data/", "pretrained:data/"):
                if value.startswith(prefix):
                    return prefix.removesuffix("data/") + str(self.root / value.removeprefix(prefix))
        return value


def study_config(profile: Profile, data: Data, out: Path, sources: tuple[str, ...] = SOURCES) -> dict:
    """``jobs/study.yaml`` (its ``sources`` over the general corpus, the five targets) with the profile's teacher,
    student, row caps and hardware."""
    raw = data.rebase(load_raw(STUDY_JOB))
    raw["study"]["sources"] = {name: raw["study"]["sources"][name] for name in sources}
    trainer = profile.trainer
    raw |= {"output_dir": str(out / "study"), "mlflow": mlflow(out)}
    raw["data"] |= {"max_train_rows": profile.source_rows, "max_transfer_rows": profile.corpus_rows}
    raw["teacher"] |= {"backbone": str(data.teacher(profile)), **trainer}
    raw["label"] = {**raw.get("label", {}), "batch_size": 64, **profile.label}
    raw["distill"] |= {"student": {**profile.student, "init": f"pretrained:{data.minilm}"}, **trainer}
    for stage in raw["distill"]["stages"]:  # logits: one epoch per gradual sub-stage, as jobs/study.yaml has it
        stage["epochs"] = {"hidden": profile.hidden_epochs, "labels": profile.epochs}.get(stage["name"], stage["epochs"])
    raw["transfer"] |= {"epochs": profile.epochs, "latency_sentences": 16, **trainer}
    for task in raw["transfer"]["tasks"]:
        task["max_train_rows"] = profile.target_rows
    return raw


def mlflow(out: Path) -> dict:
    return {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "xdray-bench-agnostic"}


class Records:
    """Finished fine-tunes (and latencies), one JSON line each, appended as they finish."""

    def __init__(self, path: Path):
        self.path = path
        lines = path.read_text().splitlines() if path.is_file() else []
        self.rows = [json.loads(line) for line in lines if line.strip()]

    def get(self, **key) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)


ARMS = tuple(f"distilled/{s}" for s in SOURCES) + BASELINES


def runs_wanted(seeds: int, arms: tuple[str, ...] = ARMS) -> list[tuple[str, str, int]]:
    """(arm, task, seed) of every fine-tune, seeds outermost: an interrupted run has every arm at the same seeds."""
    return [(arm, task, seed) for seed in range(seeds) for arm in arms for task in TARGETS
            if OWN_TASK.get(arm.removeprefix("distilled/")) != task]


def chosen_arms(spec: str) -> tuple[str, ...]:
    """``--arms``: arm names, or the groups ``distilled`` and ``baselines``, comma-separated."""
    groups = {"distilled": ARMS[:len(SOURCES)], "baselines": BASELINES, "all": ARMS}
    arms = [a for part in spec.split(",") for a in groups.get(part.strip(), (part.strip(),))]
    if bad := [a for a in arms if a not in ARMS]:
        raise SystemExit(f"--arms: unknown arm {bad[0]!r}; fix: choose from {', '.join(ARMS)}, distilled, baselines")
    return tuple(dict.fromkeys(arms))


def baseline_student(profile: Profile, data: Data, out: Path, arm: str) -> Path:
    """The student's architecture on the teacher's vocabulary: MiniLM's blocks as initialised, or random."""
    from xdray.common.hf import load_classifier
    from xdray.distill.student import build_student

    dest = out / f"{arm}-student"
    if not (dest / "config.json").exists():
        init = {"init": "random", "embeddings": "random"} if arm == "random" else {"init": f"pretrained:{data.minilm}"}
        teacher, tokenizer = load_classifier(str(data.teacher(profile)), num_labels=2)
        build_student(StudentConfig(**{**profile.student, **init}), teacher, 2, seed=0,
                      tokenizer=tokenizer).save_pretrained(dest, safe_serialization=True)
        tokenizer.save_pretrained(dest)
    return dest


def fine_tune(study: dict, out: Path, student: Path, task: str, seed: int) -> dict:
    """One target fine-tune of one arm, with the study's own transfer settings."""
    section = {k: v for k, v in study["transfer"].items() if k != "tasks"}
    raw = {"output_dir": str(out), "seed": seed, "mlflow": mlflow(out.parents[2]),
           "transfer": {**section, "student": str(student),
                        "tasks": [t for t in study["transfer"]["tasks"] if t["name"] == task]}}
    return run(raw, "transfer")["tasks"][task]


def record_of(arm: str, task: str, seed: int, result: dict) -> dict:
    return {"arm": arm, "task": task, "seed": seed, "metric": result["metric"], "score": result["test"]["score"],
            "params": result["params"]["total"], "seconds": result["seconds"]}


def source_record(source: str, result: dict, sub: XdrayConfig) -> dict:
    """A source's teacher and student on the source task, and what each of its steps cost (seconds)."""
    return {"kind": "source", "source": source, "teacher_test": result["teacher_test"],
            "student_test": result["student_test"], "student_params": result["student_params"],
            "seconds": {step: read_summary(sub, step)["seconds"] for step in ("teacher", "label", "distill", "transfer")}}


def run_profile(profile: Profile, data: Data, out: Path, records: Records, seeds: int,
                arms: tuple[str, ...] = ARMS) -> dict[str, Path]:
    """Every fine-tune not yet recorded; returns the arms' starting checkpoints at hand (the baselines always, they
    are cheap to build; the distilled students when this session distilled them)."""
    wanted = [w for w in runs_wanted(seeds, arms) if records.get(arm=w[0], task=w[1], seed=w[2]) is None]
    students = {arm: data.teacher(profile) if arm == "teacher" else baseline_student(profile, data, out, arm)
                for arm in BASELINES}
    sources = tuple(s for s in SOURCES if any(arm == f"distilled/{s}" for arm, _, _ in wanted))
    study = study_config(profile, data, out, sources or SOURCES)
    if sources:  # only the sources still wanted: on 2 cores one source's study is most of a session
        from xdray.study import run_study

        cfg = validate_config(study)
        summary = run_study(cfg, Tracker(tracking_uri(cfg)))
        for source in sources:
            students[f"distilled/{source}"] = Path(summary["sources"][source]["student_dir"])
            sub = cfg.source_config(source)
            if records.get(kind="source", source=source) is None:
                records.add(source_record(source, summary["sources"][source], sub))
            done = read_summary(sub, "transfer")["tasks"]
            for task, result in done.items():  # the study's own fine-tunes are seed 0 (cfg.seed)
                if records.get(arm=f"distilled/{source}", task=task, seed=cfg.seed) is None:
                    records.add(record_of(f"distilled/{source}", task, cfg.seed, result))
    for arm, task, seed in wanted:
        if records.get(arm=arm, task=task, seed=seed) is None:
            result = fine_tune(study, out / arm.replace("/", "-") / task / f"seed{seed}", students[arm], task, seed)
            records.add(record_of(arm, task, seed, result))
    return students


def measure_latency(students: dict[str, Path], data: Data, records: Records, rounds: int = 3) -> None:
    """CPU ms per sentence (batch 1, 1 thread) of the teacher and of the students' architecture, in one run (a ratio
    across sessions or machines is noise), on an idle machine after all training, the order alternated each round;
    the fastest round counts. Every student arm is the profile's one architecture, so the undistilled checkpoint
    (always at hand) stands for all of them; their weights do not change the time."""
    if records.get(kind="speed") is not None:
        return
    tweets = data.root / "transfer" / "vader_tweets" / "test.tsv"
    texts = [line.split("\t")[0] for line in tweets.read_text().splitlines()[1:101]]
    print(f"[bench] CPU {wait_for_idle_cpu():.0f}% busy before timing latency", flush=True)
    times: dict[str, list[float]] = {"teacher": [], "undistilled": []}
    for r in range(rounds):
        for arm in sorted(times, reverse=r % 2 == 1):
            times[arm].append(cpu_latency_ms(students[arm], texts, 64))
    records.add({"kind": "speed", "teacher_ms": round(min(times["teacher"]), 3),
                 "student_ms": round(min(times["undistilled"]), 3)})


def summarise(records: Records, seeds: int) -> list[dict]:
    """One row per arm and task, for the arms with all their fine-tunes recorded (every target at every seed; a
    half-done arm would shrink the targets the table averages over): mean ± std of the test score."""
    rows = []
    for arm in ARMS:
        done = {(task, seed): records.get(arm=arm, task=task, seed=seed) for _, task, seed in runs_wanted(seeds, (arm,))}
        if None in done.values():
            continue
        for task in dict.fromkeys(task for task, _ in done):
            runs = [done[task, seed] for seed in range(seeds)]
            scores = [r["score"] for r in runs]
            rows.append({"arm": arm, "source": arm.removeprefix("distilled/") if "/" in arm else None, "task": task,
                         "metric": runs[0]["metric"], "mean": round(statistics.mean(scores), 4),
                         "std": round(statistics.stdev(scores), 4) if len(scores) > 1 else 0.0,
                         "params": runs[0]["params"], "seeds": seeds})
    return rows


def markdown(rows: list[dict], records: Records, profile_name: str, seeds: int) -> str:
    """The paper's layout: params, speedup over the teacher, one column per target, and the average over the
    targets every arm was fine-tuned on (the paraphrase task is the Bible source's own)."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    common = [t for t in TARGETS if all(any(r["arm"] == a and r["task"] == t for r in rows) for a in arms)]
    speed = records.get(kind="speed")
    student_speedup = f"{speed['teacher_ms'] / speed['student_ms']:.1f}x" if speed else ""
    lines = ["| arm | params | speedup | " + " | ".join(TARGETS) + " | average |",
             "|---|---|---|" + "---|" * len(TARGETS) + "---|"]
    for arm in arms:
        mine = {r["task"]: r for r in rows if r["arm"] == arm}
        speedup = ("1.0x" if speed else "") if arm == "teacher" else student_speedup
        cells = [f"{mine[t]['mean'] * 100:.1f}" + (f" ± {mine[t]['std'] * 100:.1f}" if seeds > 1 else "")
                 if t in mine else "(source)" for t in TARGETS]
        average = statistics.mean(mine[t]["mean"] for t in common) * 100 if common else float("nan")
        params = next(iter(mine.values()))["params"] / 1e6
        lines.append(f"| {arm} | {params:.1f}M | {speedup} | " + " | ".join(cells) + f" | {average:.1f} |")
    metrics = ", ".join(f"{t} {next(r['metric'] for r in rows if r['task'] == t)}" for t in TARGETS
                        if any(r["task"] == t for r in rows))
    for r in records.rows:
        if r.get("kind") == "source":
            cost = ", ".join(f"{step} {seconds:,.0f} s" for step, seconds in r["seconds"].items())
            lines.append(f"\nsource {r['source']}: teacher {r['teacher_test'] * 100:.1f}, student "
                         f"{r['student_test'] * 100:.1f} on its own test ({cost})")
    return ("\n".join(lines) + f"\n\n(profile {profile_name}, {seeds} seed(s); test {metrics}; average over "
            f"{', '.join(common)}; speedup = teacher ms / student ms per sentence, batch 1, 1 CPU thread, one run)\n")


def prepare(data: Data, profile: Profile) -> None:
    """Every set the profile reads, idempotently (the targets before the corpus, which holds their dev/test out)."""
    from xdray.data.general_corpus import prepare_general_corpus
    from xdray.data.paraphrase import prepare_paraphrase
    from xdray.data.samples import prepare_samples
    from xdray.data.spam import prepare_spam
    from xdray.data.teachers import prepare_teachers
    from xdray.data.token_sets import prepare_token_sets
    from xdray.data.transfer_sets import prepare_transfer_sets

    held_out = []
    for name, fn in (("samples", prepare_samples), ("transfer", prepare_transfer_sets), ("tokens", prepare_token_sets),
                     ("paraphrase", prepare_paraphrase), ("spam", prepare_spam)):
        fn(data.root / name)
        held_out.append(data.root / name)
    prepare_general_corpus(data.root / "general", held_out, pairs=profile.corpus_rows or "all")  # as many rows
    if profile.teacher == "mpnet":
        prepare_teachers(data.root / "teachers", ["mpnet-base"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("data"), help="where xdray data puts (or put) every set")
    parser.add_argument("--out", type=Path, default=None, help="default outputs/bench/agnostic-<profile>")
    parser.add_argument("--results", type=Path, default=None, help="default bench/results/agnostic-<profile>.jsonl")
    parser.add_argument("--no-prepare", action="store_true", help="the sets are in --data already")
    parser.add_argument("--arms", default="all", help="arms to run now (distilled, baselines or names; the "
                        "table holds every recorded arm): a session too short for the whole profile runs a part")
    parser.add_argument("--table-only", action="store_true", help="print the table of the runs recorded for --seeds "
                        "(e.g. --seeds 1 while later seeds are missing) and run nothing")
    args = parser.parse_args(argv)
    profile, data = PROFILES[args.profile], Data(args.data.resolve())
    out = (args.out or Path("outputs/bench") / f"agnostic-{args.profile}").resolve()
    records = Records(args.results or Path(__file__).parent / "results" / f"agnostic-{args.profile}.jsonl")
    if not args.table_only:
        if not args.no_prepare:
            prepare(data, profile)
        students = run_profile(profile, data, out, records, args.seeds, chosen_arms(args.arms))
        measure_latency(students, data, records)
    rows = summarise(records, args.seeds)
    for row in rows:
        print(json.dumps(row), flush=True)
    table = markdown(rows, records, args.profile, args.seeds)
    if not args.table_only:
        (records.path.with_suffix(".md")).write_text(table)
    print(table, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
