"""`xdray pipeline`: teacher → label → distill → search (→ transfer → export) from one config, as one MLflow parent
run, and the Ray session every step runs in.

A step whose ``summary.json`` exists is complete and is skipped, so a rerun after a crash continues where
the last complete step ended. The final table compares teacher and student: test accuracy (from each step's
summary, measured once) and CPU latency (measured in one Ray task, one after the other, so the speedup is one
run's ratio on one node); with an export of the source task's model, its int8 graph is a third row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tabulate import tabulate

from xdray.checks import pipeline_steps
from xdray.common.files import read_summary, weights_bytes, write_summary
from xdray.common.hf import load_classifier
from xdray.common.latency import measure_latency
from xdray.common.tracking import Tracker, tracking_uri
from xdray.config import XdrayConfig
from xdray.console import console
from xdray.data.tables import read_labeled

LATENCY_SENTENCES = 64


def _step_fn(step: str):
    if step == "teacher":
        from xdray.teacher.run import run_teacher

        return run_teacher
    if step == "label":
        from xdray.label.run import run_label

        return run_label
    if step == "search":
        from xdray.search.run import run_search

        return run_search
    if step == "transfer":
        from xdray.transfer.run import run_transfer

        return run_transfer
    if step == "export":
        from xdray.export.run import run_export

        return run_export
    from xdray.distill.run import run_distill

    return run_distill


def run_step(cfg: XdrayConfig, tracker: Tracker, step: str, parent: str | None = None, place: str = "") -> dict:
    """One step, between its start and end lines on the console."""
    with ray_session(cfg):
        console.line(f"{place}{step}: running")
        t0 = time.perf_counter()
        summary = _step_fn(step)(cfg, tracker, parent)
        console.line(f"{place}{step}: done in {time.perf_counter() - t0:.0f} s · {headline(step, summary)}")
    return summary


def headline(step: str, summary: dict) -> str:
    """A step's result in one line."""
    if step in ("teacher", "distill"):
        score = (f"test {summary['metric']} {summary['test']['score']:.3f}" if "metric" in summary  # a token task's
                 else f"test accuracy {summary['test_accuracy']:.1%}")
        return f"{score}, {summary['params']['total'] / 1e6:.2f}M params{unchanged_stages(summary)}"
    if step == "label":
        return (f"{summary['rows']:,} rows ({summary['dev_rows']:,} dev) with the teacher's outputs in "
                f"{summary['data']}" + ("" if summary.get("up_to_date") else f", {summary['rows_per_s']:,.0f} rows/s"))
    if step == "search":
        best = summary["best"]
        return (f"{summary['completed']} of {len(summary['trials'])} trials trained; best {best['arch']} "
                f"(dev {best['dev_accuracy']:.1%}, {best['params'] / 1e6:.2f}M params)")
    if step == "export":
        int8, fp32 = (summary["metrics"][v]["test"]["score"] for v in ("onnx_int8", "onnx_fp32"))
        speed = summary["speedup_vs_teacher"]
        faster = f", {speed['onnx_int8']:.1f}x the teacher" if speed else ""
        ms = summary["latency_ms"]["onnx_int8"][f"b{summary['latency_batch']}"]
        return (f"ONNX fp32 within {summary['onnx_max_abs_diff']:.1e} of torch; int8 test score {int8:.3f} "
                f"(fp32 {fp32:.3f}), {ms:.2f} ms/sentence{faster}")
    return ", ".join(f"{name} test {r['metric']} {r['test']['score']:.3f}" for name, r in summary["tasks"].items())


def unchanged_stages(summary: dict) -> str:
    """The distillation stages that changed nothing: no epoch beat the weights they started from on dev, so those
    were kept (a stage whose data does not fit the source's dev set, e.g. single-sentence corpus logits for a
    sentence-pair source). Said on the step's line, as it is easy to miss in the history."""
    kept = [r["stage"] for r in summary.get("history", []) if r.get("best_epoch") == -1]
    return f" · kept the starting weights (no epoch better on dev): {', '.join(kept)}" if kept else ""


def run_pipeline(cfg: XdrayConfig, tracker: Tracker) -> dict:
    t0 = time.perf_counter()
    ran, skipped = [], []
    with tracker.run(cfg, "pipeline") as parent, ray_session(cfg):
        tracker.params(parent, {"config": cfg.model_dump(mode="json")})
        steps = pipeline_steps(cfg)
        for i, step in enumerate(steps, 1):
            place = f"[{i}/{len(steps)}] "
            if read_summary(cfg, step) is not None:
                console.line(f"{place}{step}: complete, skipping ({cfg.step_dir(step) / 'summary.json'})")
                skipped.append(step)
                continue
            run_step(cfg, tracker, step, parent, place)
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
        console.line(results_table(cfg, summary))
    return summary


def compare(cfg: XdrayConfig) -> dict:
    """Teacher, student and (when the pipeline exported a model of the source task) its int8 ONNX graph: test
    accuracy from each step's summary, latency of all three measured back to back in one Ray task."""
    teacher, distill, search, export = (read_summary(cfg, s) for s in ("teacher", "distill", "search", "export"))
    texts = read_labeled(cfg.data.test).texts[:LATENCY_SENTENCES]
    student_dir = cfg.step_dir("distill") / "student"
    dirs, loaders = [cfg.teacher_dir, student_dir], [load_classifier, load_classifier]
    int8 = export is not None and export["data"] == "source"
    if int8:
        from xdray.export.onnx import load_onnx

        dirs.append(Path(export["export_dir"]) / "model.int8.onnx")
        loaders.append(load_onnx)
    ms, node = measure_latency(dirs, texts, cfg.data.max_length, [1], loader=loaders)
    t_ms, s_ms = ms[0][1], ms[1][1]
    out = {
        "teacher_test_accuracy": teacher["test_accuracy"], "student_test_accuracy": distill["test_accuracy"],
        "teacher_params": teacher["params"]["total"], "student_params": distill["params"]["total"],
        "teacher_latency_ms": round(t_ms, 3), "student_latency_ms": round(s_ms, 3),
        "speedup": round(t_ms / s_ms, 2), "compression": round(teacher["params"]["total"] / distill["params"]["total"], 2),
        "teacher_bytes": weights_bytes(cfg.teacher_dir), "student_bytes": weights_bytes(student_dir),
        "latency_node": node,
    }
    for who, step in (("teacher", teacher), ("student", distill)):
        if step.get("test_by_language"):
            out[f"{who}_test_by_language"] = step["test_by_language"]
    if int8:
        out |= {"int8_model": export["model_dir"], "int8_test_accuracy": export["metrics"]["onnx_int8"]["test"]["accuracy"],
                "int8_latency_ms": round(ms[2][1], 3), "int8_speedup": round(t_ms / ms[2][1], 2),
                "int8_bytes": export["size_bytes"]["onnx_int8"]}
    if search:
        out["search_best"] = search["best"]
    return out


def results_table(cfg: XdrayConfig, summary: dict) -> str:
    """Teacher, student, int8 and the search's best; one more accuracy column per extra test split (language)."""
    langs = sorted(set(summary.get("teacher_test_by_language", {})) | set(summary.get("student_test_by_language", {})))

    def by_language(who: str) -> list[str]:
        scores = summary.get(f"{who}_test_by_language", {})
        return [f"{scores[n]:.1%}" if n in scores else "" for n in langs]

    rows = [
        ["teacher", f"{summary['teacher_test_accuracy']:.1%}", *by_language("teacher"),
         f"{summary['teacher_params'] / 1e6:.2f}M", _mb(summary["teacher_bytes"]),
         f"{summary['teacher_latency_ms']:.2f}", "1.0x"],
        ["student (distilled)", f"{summary['student_test_accuracy']:.1%}", *by_language("student"),
         f"{summary['student_params'] / 1e6:.2f}M", _mb(summary["student_bytes"]),
         f"{summary['student_latency_ms']:.2f}", f"{summary['speedup']:.1f}x"],
    ]
    blank = [""] * len(langs)
    if "int8_model" in summary:
        name = Path(summary["int8_model"]).name
        rows.append([f"{'student' if name == 'student' else name} int8 (ONNX)", f"{summary['int8_test_accuracy']:.1%}",
                     *blank, f"{summary['student_params'] / 1e6:.2f}M" if name == "student" else "",
                     _mb(summary["int8_bytes"]), f"{summary['int8_latency_ms']:.2f}", f"{summary['int8_speedup']:.1f}x"])
    best = summary.get("search_best")
    if best:
        rows.append([f"search best ({best['arch']})", f"dev {best['dev_accuracy']:.1%}", *blank,
                     f"{best['params'] / 1e6:.2f}M", "", "", ""])
    table = tabulate(rows, headers=["model", "test accuracy", *(f"test {n}" for n in langs), "params", "size on disk",
                                    "CPU ms/sentence (batch 1, 1 thread)", "speedup"])
    uri = tracking_uri(cfg)
    return (
        f"\n{table}\n\noutputs: {cfg.output_dir}\n"
        f"MLflow: experiment '{cfg.mlflow.experiment}' at {uri}\n"
        f"  open it with: mlflow ui --backend-store-uri {uri}\n"
        f"pipeline wall time: {summary['seconds']:.0f} s\n"
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


@contextmanager
def ray_session(cfg: XdrayConfig) -> Iterator[None]:
    """Connect to ``ray.address``, or start a local instance; reuse one that is already running in-process.

    With no address, ``address="local"`` keeps Ray from joining whatever ``ray_current_cluster`` an earlier
    ``ray start`` left on the machine (live or dead): ``ray.address=auto`` is how a user asks for that."""
    import ray

    if ray.is_initialized():
        yield
        return
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):  # a Ray Job's driver gets RAY_ADDRESS from Ray
        ray.init(address=cfg.ray.address)
    else:
        # Train workers and actors reserve whole CPUs; a few extra logical CPUs keep Ray Data's read and
        # write tasks from starving on a small machine (torch threads follow each worker's own reservation).
        ray.init(address="local", num_cpus=cfg.ray.num_cpus or max(4, os.cpu_count() or 1))
    try:
        yield
    finally:
        ray.shutdown()
