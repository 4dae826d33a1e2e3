"""`xdray search`: Ray Tune over student architectures; every trial is a distill run on the same Parquet.

The Ray 2.60 pattern: a Tune function trainable per trial builds a ``TorchTrainer`` whose ``TuneReportCallback``
forwards the workers' reports to Tune. The teacher is never run during a search: trials read the teacher
outputs the labelling step wrote once.
"""

from __future__ import annotations

import shutil
import time

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from xdray.config import StudentConfig, XdrayConfig
from xdray.runtime import replace_dir, staging_dir, write_summary
from xdray.data.tables import load_splits
from xdray.steps import make_spec, student_data
from xdray.tracking import Tracker
from xdray.train import export_student, fit

# The trial function only waits on its TorchTrainer, whose workers hold the real CPUs; Tune rejects 0.
TRIAL_DRIVER_CPUS = 0.1


def architectures(cfg: XdrayConfig) -> list[dict]:
    """The grid, each point a valid student (heads derived from hidden / head_size)."""
    sc = cfg.search
    archs = []
    for layers in sc.layers:
        for hidden in sc.hidden:
            spec = StudentConfig(
                layers=layers, hidden=hidden, heads=max(1, hidden // sc.head_size),
                embeddings=cfg.distill.student.embeddings, freeze_embeddings=cfg.distill.student.freeze_embeddings,
            )
            archs.append(spec.model_dump())
    return archs


def arch_name(arch: dict) -> str:
    return f"L{arch['layers']}-H{arch['hidden']}-A{arch['heads']}"


def run_search(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    out = cfg.step_dir("search")
    train, dev, _ = load_splits(cfg)
    stages = [s.model_dump() for s in cfg.distill.stages]
    trainer_cfg = cfg.search_trainer()
    num_labels = max(train.labels) + 1
    # checked once, before any trial starts; every trial reads the same Parquet and dev table
    datasets, dev_table = student_data(cfg, train, dev, stages, cfg.search.layers)

    with tracker.run(cfg, "search", parent) as search_run:
        tracker.params(search_run, {"search": cfg.search.model_dump(mode="json")})

        def trial(config: dict) -> None:
            """One Tune trial: a child MLflow run and a TorchTrainer distilling one architecture."""
            arch = config["arch"]
            trial_id = tune.get_context().get_trial_id()
            trial_dir = out / "trials" / trial_id
            with tracker.run(cfg, f"trial-{arch_name(arch)}", search_run) as run_id:
                tracker.params(run_id, {"arch": arch, "trial_id": trial_id})
                spec = make_spec(
                    cfg, trainer_cfg, "student", str(cfg.teacher_dir), stages, num_labels, dev_table,
                    trial_dir / "scratch", run_id, student=StudentConfig(**arch),
                )
                result = fit(
                    spec, trainer_cfg, datasets, out / "ray" / "trials",
                    f"trial-{trial_id}", callbacks=[TuneReportCallback()],
                )
                trained = export_student(result, trial_dir / "student")
                shutil.rmtree(trial_dir / "scratch", ignore_errors=True)
                tracker.metrics(run_id, {"dev_accuracy": trained["dev_accuracy"], "params": trained["params"]["total"]})

        t0 = time.perf_counter()
        tuner = tune.Tuner(
            tune.with_resources(trial, {"cpu": TRIAL_DRIVER_CPUS}),
            param_space={"arch": tune.grid_search(architectures(cfg))},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.search.max_concurrent_trials),
            run_config=tune.RunConfig(name="search", storage_path=str(out / "ray"), verbose=1),
        )
        grid = tuner.fit()
        wall = time.perf_counter() - t0

        trials = []
        for r in grid:
            if r.error:
                raise RuntimeError(f"search trial {r.config['arch']} failed: {r.error}")
            arch = r.config["arch"]
            trials.append({
                "trial_id": r.metrics["trial_id"], "arch": arch_name(arch), **arch,
                "dev_accuracy": r.metrics["dev_accuracy"], "params": r.metrics["params"]["total"],
                "seconds": round(r.metrics["time_total_s"], 1),
                "student_dir": str(out / "trials" / r.metrics["trial_id"] / "student"),
            })
        best = max(trials, key=lambda t: (t["dev_accuracy"], -t["params"]))
        tmp = staging_dir(out / "best_student")
        shutil.copytree(best["student_dir"], tmp)
        replace_dir(tmp, out / "best_student")
        summary = {
            "trials": trials, "best": {k: best[k] for k in ("arch", "dev_accuracy", "params", "trial_id")},
            "best_student_dir": str(out / "best_student"), "teacher_forwards": 0,
            "wall_seconds": round(wall, 1), "sum_trial_seconds": round(sum(t["seconds"] for t in trials), 1),
            "mlflow_run_id": search_run,
        }
        tracker.metrics(search_run, {"best_dev_accuracy": best["dev_accuracy"], "trials": len(trials),
                                     "wall_seconds": summary["wall_seconds"]})
        tracker.artifact(search_run, write_summary(cfg, "search", summary))
    return summary

