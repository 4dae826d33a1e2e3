"""`xdray pipeline`: teacher → label → distill → search from one config, as one MLflow parent run.

A step whose ``summary.json`` exists is complete and is skipped, so a rerun after a crash continues where
the last complete step ended. The final table compares teacher and student: test accuracy (from each step's
summary, measured once) and CPU latency (both measured in one Ray task, one after the other, so the speedup is one
run's ratio on one node).
"""

from __future__ import annotations

import time

from tabulate import tabulate

from xdray.config import XdrayConfig
from xdray.data.tables import read_labeled
from xdray.evaluate import measure_latency
from xdray.runtime import pipeline_steps, ray_session, read_summary, write_summary
from xdray.tracking import Tracker, tracking_uri

LATENCY_SENTENCES = 64


def _step_fn(step: str):
    if step == "label":
        from xdray.label import run_label

        return run_label
    if step == "search":
        from xdray.search.run import run_search

        return run_search
    if step == "transfer":
        from xdray.transfer.run import run_transfer

        return run_transfer
    from xdray.steps import run_distill, run_teacher

    return {"teacher": run_teacher, "distill": run_distill}[step]


def run_step(cfg: XdrayConfig, tracker: Tracker, step: str, parent: str | None = None) -> dict:
    with ray_session(cfg):
        return _step_fn(step)(cfg, tracker, parent)


def run_pipeline(cfg: XdrayConfig, tracker: Tracker) -> dict:
    t0 = time.perf_counter()
    ran, skipped = [], []
    with tracker.run(cfg, "pipeline") as parent, ray_session(cfg):
        tracker.params(parent, {"config": cfg.model_dump(mode="json")})
        for step in pipeline_steps(cfg):
            if read_summary(cfg, step) is not None:
                print(f"[xdray] {step}: complete, skipping ({cfg.step_dir(step) / 'summary.json'})", flush=True)
                skipped.append(step)
                continue
            print(f"[xdray] {step}: running", flush=True)
            _step_fn(step)(cfg, tracker, parent)
            ran.append(step)
        results = compare(cfg) if cfg.data is not None else {}
        tracker.metrics(parent, {k: v for k, v in results.items() if isinstance(v, (int, float))})
        summary = {
            **results, "ran": ran, "skipped": skipped, "seconds": round(time.perf_counter() - t0, 1),
            "mlflow_run_id": parent, "mlflow_experiment": cfg.mlflow.experiment,
        }
        path = write_summary(cfg, "pipeline", summary)
        tracker.artifact(parent, path)
    if cfg.data is not None:
        print(results_table(cfg, summary))
    return summary


def compare(cfg: XdrayConfig) -> dict:
    teacher, distill, search = (read_summary(cfg, s) for s in ("teacher", "distill", "search"))
    texts = read_labeled(cfg.data.test).texts[:LATENCY_SENTENCES]
    (teacher_ms, student_ms), node = measure_latency([cfg.teacher_dir, cfg.step_dir("distill") / "student"], texts,
                                                     cfg.data.max_length, [1])
    t_ms, s_ms = teacher_ms[1], student_ms[1]
    out = {
        "teacher_test_accuracy": teacher["test_accuracy"], "student_test_accuracy": distill["test_accuracy"],
        "teacher_params": teacher["params"]["total"], "student_params": distill["params"]["total"],
        "teacher_latency_ms": round(t_ms, 3), "student_latency_ms": round(s_ms, 3),
        "speedup": round(t_ms / s_ms, 2), "compression": round(teacher["params"]["total"] / distill["params"]["total"], 2),
        "latency_node": node,
    }
    if search:
        out["search_best"] = search["best"]
    return out


def results_table(cfg: XdrayConfig, summary: dict) -> str:
    rows = [
        ["teacher", f"{summary['teacher_test_accuracy']:.1%}", f"{summary['teacher_params'] / 1e6:.2f}M",
         f"{summary['teacher_latency_ms']:.2f}", "1.0x"],
        ["student (distilled)", f"{summary['student_test_accuracy']:.1%}", f"{summary['student_params'] / 1e6:.2f}M",
         f"{summary['student_latency_ms']:.2f}", f"{summary['speedup']:.1f}x"],
    ]
    best = summary.get("search_best")
    if best:
        rows.append([f"search best ({best['arch']})", f"dev {best['dev_accuracy']:.1%}",
                     f"{best['params'] / 1e6:.2f}M", "", ""])
    table = tabulate(rows, headers=["model", "test accuracy", "params", "CPU ms/sentence (batch 1, 1 thread)", "speedup"])
    uri = tracking_uri(cfg)
    return (
        f"\n{table}\n\noutputs: {cfg.output_dir}\n"
        f"MLflow: experiment '{cfg.mlflow.experiment}' at {uri}\n"
        f"  open it with: mlflow ui --backend-store-uri {uri}\n"
        f"pipeline wall time: {summary['seconds']:.0f} s\n"
    )
