"""`xdray search`: Ray Tune over student architectures, every trial a distillation on the same Parquet.

Optuna samples the space (two objectives: accuracy and measured latency or size, giving a Pareto front; one
objective: accuracy, optionally with ASHA stopping weak trials). The Tune experiment is named by everything
that decides what trials train, so rerunning the same command after an interruption restores it
(``Tuner.restore``): finished trials are not rerun, unfinished ones resume from their Ray Train checkpoints.
The budget only chooses among finished trials, so changing it reruns nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import ray
from ray import tune
from transformers import AutoConfig, AutoTokenizer

from xdray.common.files import file_stamp, replace_dir, staging_dir, write_json, write_summary
from xdray.common.tracking import Tracker
from xdray.config import OBJECTIVES, XdrayConfig
from xdray.config.space import candidate, every_candidate, stages, to_params
from xdray.console import console
from xdray.distill.prune import corpus_pieces
from xdray.distill.run import check_student_fits, source_data, student_data
from xdray.errors import XdrayError
from xdray.search import pareto
from xdray.search.space import define
from xdray.search.trial import TrialContext, make_trial, trial_latency

# The trial function only waits on its TorchTrainer, whose workers hold the real CPUs; Tune rejects 0.
TRIAL_DRIVER_CPUS = 0.1


def experiment_name(cfg: XdrayConfig) -> str:
    """``search-<hash>`` of what decides the trials (not the budget or the concurrency)."""
    search = cfg.search.model_dump(mode="json", exclude={"budget", "max_concurrent_trials"})
    key = {"search": search, "distill": cfg.distill.model_dump(mode="json"), "seed": cfg.seed,
           "inputs": {str(p): file_stamp(p) for p in (cfg.data.train, cfg.data.dev, cfg.labels_dir / "_manifest.json")
                      if p.exists()}}
    return f"search-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]}"


def _check_space(cfg: XdrayConfig) -> list:
    """Every student the space can produce is checked against the teacher before any trial starts."""
    if cfg.distill.teacher_mode == "online":
        raise XdrayError("search trials read the stored teacher outputs and never run the teacher; "
                         "fix: set distill.teacher_mode: offline for the search")
    for name, schedule in cfg.search_schedules().items():
        if any("attention" in s.loss for s in schedule):
            raise XdrayError(f"search schedule {name}: the attention loss needs the teacher in the workers; "
                             "fix: use hidden/logits losses in search schedules")
    candidates = every_candidate(cfg)  # valid students: the config checked them at load time
    teacher = AutoConfig.from_pretrained(cfg.teacher_dir)
    hidden = {name: any("hidden" in s.loss for s in schedule) for name, schedule in cfg.search_schedules().items()}
    for c in candidates:
        check_student_fits(cfg, c.student, hidden[c.schedule], teacher)
    return candidates


def _concurrency(cfg: XdrayConfig) -> int:
    if cfg.search.max_concurrent_trials:
        return cfg.search.max_concurrent_trials
    t = cfg.search_trainer()
    free = ray.cluster_resources()
    if t.use_gpu:
        return max(1, int(free.get("GPU", 0) // t.workers))
    return max(1, int(free.get("CPU", 1) // (t.workers * t.cpus_per_worker)))


def _tuner(cfg: XdrayConfig, trainable, name: str) -> tuple[tune.Tuner, bool]:
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    storage = cfg.step_dir("search") / "ray"
    trainable = tune.with_resources(trainable, {"cpu": TRIAL_DRIVER_CPUS})
    if tune.Tuner.can_restore(str(storage / name)):
        return tune.Tuner.restore(str(storage / name), trainable, resume_unfinished=True, resume_errored=True), True
    sc = cfg.search
    sampler = (optuna.samplers.TPESampler if sc.sampler == "tpe" else optuna.samplers.RandomSampler)(seed=cfg.seed)
    single = len(sc.objectives) == 1
    searcher = OptunaSearch(
        space=define(sc.space, list(cfg.search_schedules())), sampler=sampler,
        metric=sc.objectives[0] if single else list(sc.objectives),
        mode=OBJECTIVES[sc.objectives[0]] if single else [OBJECTIVES[o] for o in sc.objectives],
        points_to_evaluate=[to_params(p) for p in sc.points_to_evaluate] or None,
    )
    scheduler = None
    if sc.asha:
        scheduler = ASHAScheduler(metric="dev_accuracy", mode="max", time_attr="training_iteration",
                                  grace_period=sc.asha.grace_period, reduction_factor=sc.asha.reduction_factor,
                                  max_t=sc.asha.max_t)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=sc.num_samples,
                                    max_concurrent_trials=_concurrency(cfg)),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1),
    )
    return tuner, False


def at_chance(accuracy: float, labels: list[int], alpha: float = 0.01) -> bool:
    """Whether a dev accuracy is no better than always answering the most frequent dev label: a one-sided
    binomial test at ``alpha``. A trial that diverged (CE stuck at ln(classes)) lands here; so does one whose dev
    split is too small to tell it from chance."""
    from scipy.stats import binomtest

    n = len(labels)
    majority = max(labels.count(y) for y in set(labels)) / n
    hits = round(accuracy * n)
    return hits <= majority * n or binomtest(hits, n, majority, alternative="greater").pvalue >= alpha


def _trials(cfg: XdrayConfig, grid, ctx: TrialContext) -> list[dict]:
    dev_labels = ctx.dev_table.column("label").to_pylist()
    trials = []
    for r in grid:
        m = r.metrics or {}
        cand = candidate(r.config, cfg)
        status = ("error" if r.error else "duplicate" if m.get("duplicate_of")
                  else "completed" if m.get("final") else "stopped")
        if status == "completed" and at_chance(m["dev_accuracy"], dev_labels):
            status = "diverged"  # trained to the end, but no better than the majority label: kept off the front
        trial_id = m.get("trial_id") or r.path.rsplit("/", 1)[-1]  # Tune adds trial_id to every result
        record = {"trial_id": trial_id, **cand.describe(), "status": status,
                  "iterations": m.get("training_iteration", 0), "seconds": round(m.get("time_total_s", 0.0), 1),
                  "teacher_forwards": m.get("teacher_forwards", 0)}
        for key in ("dev_accuracy", "params", "latency_ms", "duplicate_of"):
            if key in m:
                record[key] = m[key]
        if status in ("completed", "diverged"):
            record["student_dir"] = str(ctx.out / "trials" / trial_id / "student")
        if status == "error":
            record["error"] = str(r.error).strip().splitlines()[-1][:300]  # the exception, not the actor banner
        trials.append(record)
    return trials


def _poll(out: Path, total: int):
    """Trials trained (each writes its result) and started (each makes its directory)."""
    def poll() -> tuple[int, int, str]:
        done = len(list((out / "results").glob("*.json")))
        started = len(list((out / "trials").glob("*"))) if (out / "trials").is_dir() else 0
        return done, total, f"{started} started"

    return poll


def _remeasure(ctx: TrialContext, completed: list[dict]) -> None:
    """Latency again, one student at a time with nothing else running: the figures the front is drawn from
    (trials measured theirs while other trials trained). On the device's nodes, not in this driver."""
    for t in completed:
        ms, t["latency_node"] = trial_latency(ctx, t["student_dir"])
        t["latency_ms_search"] = t["latency_ms"]
        t.update({k: round(v, 4) for k, v in ms.items()})


def run_search(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    out = cfg.step_dir("search")
    sc = cfg.search
    candidates = _check_space(cfg)
    source = source_data(cfg)
    every_stage = [s for name in cfg.search_schedules() for s in stages(cfg, name)]
    datasets, dev_table, _ = student_data(cfg, source, every_stage, sorted({c.student.layers for c in candidates}))
    name = experiment_name(cfg)

    with tracker.run(cfg, "search", parent, key=name) as search_run:
        tracker.params(search_run, {"search": sc.model_dump(mode="json", exclude={"budget"}), "experiment": name,
                                    "space_size": len(candidates)})
        pieces = None
        if cfg.distill.student.vocab == "prune":  # one choice for every trial: the data decides it, not the shape
            pieces = tuple(corpus_pieces(cfg, source.texts, AutoTokenizer.from_pretrained(cfg.teacher_dir))[0])
        ctx = TrialContext(cfg, tracker, search_run, name, cfg.search_trainer(), datasets, dev_table,
                           source.num_labels, source.examples[:sc.latency.sentences], pieces)
        tuner, resumed = _tuner(cfg, make_trial(ctx), name)
        t0 = time.perf_counter()
        with console.progress("search", "trials", _poll(ctx.out, sc.num_samples)):
            grid = tuner.fit()
        wall = time.perf_counter() - t0

        trials = _trials(cfg, grid, ctx)
        completed = [t for t in trials if t["status"] == "completed"]
        for t in trials:
            run_id = tracker.find(cfg, ctx.run_key(t["trial_id"]))
            if run_id and t["status"] == "stopped":  # ASHA killed its actor before the run could end itself
                tracker.client.set_tag(run_id, "xdray.stopped_early", "true")
                tracker.client.set_terminated(run_id, "KILLED")
            if t["status"] == "diverged":
                if run_id:
                    tracker.client.set_tag(run_id, "xdray.diverged", "true")
                console.warn(f"search trial {t['trial_id']} ({t['arch']}) ended at dev accuracy "
                             f"{t['dev_accuracy']:.3f}, no better than the majority label: marked diverged, kept off "
                             "the front (try a lower lr for this shape)")
        if not completed:
            raise XdrayError(f"no search trial completed ({', '.join(t['status'] for t in trials)}); the first "
                             f"error: {next((t['error'] for t in trials if 'error' in t), 'none')}")
        _remeasure(ctx, completed)
        for t in completed:
            run_id = tracker.find(cfg, ctx.run_key(t["trial_id"]))
            if run_id:
                tracker.metrics(run_id, {k: v for k, v in t.items() if k.startswith("latency_ms")})
        front = pareto.pareto_front(completed, sc.objectives)
        chosen = pareto.choose(completed, sc.budget)
        x = "params" if "params" in sc.objectives else "latency_ms"
        table_path = out / "pareto.md"
        table_path.write_text(pareto.table(trials, front, chosen) + "\n")
        plot_path = pareto.plot(trials, front, chosen, x, out / "pareto.png")
        write_json(out / "trials.json", trials)
        for path in (table_path, plot_path, out / "trials.json"):
            tracker.artifact(search_run, path)
        if chosen is None:
            b = sc.budget
            fastest = min(completed, key=lambda t: t["latency_ms"])
            raise XdrayError(
                f"no completed trial fits search.budget (latency_ms <= {b.latency_ms}, params <= {b.params}); the "
                f"fastest is {fastest['arch']} at {fastest['latency_ms']:.3g} ms with {fastest['params']} params; "
                f"fix: raise the budget and rerun (finished trials are not rerun; see {table_path})"
            )
        tmp = staging_dir(out / "best_student")
        shutil.copytree(chosen["student_dir"], tmp)
        replace_dir(tmp, out / "best_student")
        keep = ("trial_id", "arch", "dev_accuracy", "latency_ms", "params")
        summary = {
            "objectives": sc.objectives, "experiment": name, "resumed": resumed,
            "trials": trials, "pareto": [{k: t[k] for k in keep + tuple(k for k in t if k.startswith("latency_ms_b"))}
                                         for t in front],
            "best": {k: chosen[k] for k in keep}, "budget": sc.budget.model_dump(),
            "best_student_dir": str(out / "best_student"),
            "teacher_forwards": sum(t["teacher_forwards"] for t in trials),
            "completed": len(completed), "stopped": sum(t["status"] == "stopped" for t in trials),
            "diverged": sum(t["status"] == "diverged" for t in trials),
            "wall_seconds": round(wall, 1), "sum_trial_seconds": round(sum(t["seconds"] for t in trials), 1),
            "pareto_plot": str(plot_path), "pareto_table": str(table_path), "mlflow_run_id": search_run,
        }
        summary["mlflow_model_uri"] = tracker.log_model(search_run, out / "best_student", source.examples[:2])
        tracker.metrics(search_run, {"best_dev_accuracy": chosen["dev_accuracy"], "trials": len(trials),
                                     "front_size": len(front), "teacher_forwards": summary["teacher_forwards"],
                                     "wall_seconds": summary["wall_seconds"]})
        tracker.artifact(search_run, write_summary(cfg, "search", summary))
    return summary
