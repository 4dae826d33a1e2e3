"""`xdray study`: one student per source task, all distilled over the same transfer corpora and fine-tuned on the
same targets: the paper's task-transfer question (which source makes the most universal student) asked of the
user's own tasks. Each source runs teacher → label → distill → transfer in ``<output_dir>/sources/<name>/``
(complete steps are skipped, so a rerun continues), all under one MLflow parent run; the table ranks the
sources by their students' average score over the targets every source was measured on."""

from __future__ import annotations

import statistics
import time

from tabulate import tabulate

from xdray.common.files import read_summary, write_summary
from xdray.common.tracking import Tracker
from xdray.config import XdrayConfig
from xdray.console import console
from xdray.pipeline import ray_session, run_step

STEPS = ("teacher", "label", "distill", "transfer")


def run_study(cfg: XdrayConfig, tracker: Tracker) -> dict:
    t0 = time.perf_counter()
    with tracker.run(cfg, "study") as parent, ray_session(cfg):
        tracker.params(parent, {"study": cfg.study.model_dump(mode="json")})
        sources = {}
        for name in cfg.study.sources:
            sub = cfg.source_config(name)
            for step in STEPS:
                if read_summary(sub, step) is not None:
                    console.line(f"[{name}] {step}: complete, skipping ({sub.step_dir(step) / 'summary.json'})")
                    continue
                run_step(sub, tracker, step, parent, f"[{name}] ")
            sources[name] = source_result(sub)
        common = sorted(set.intersection(*(set(r["tasks"]) for r in sources.values())))
        for result in sources.values():
            result["average"] = round(statistics.mean(result["tasks"][t]["score"] for t in common), 4) if common else None
        ranked = sorted(sources, key=lambda n: -(sources[n]["average"] or 0.0))
        summary = {"sources": sources, "common_tasks": common, "best": ranked[0],
                   "seconds": round(time.perf_counter() - t0, 1), "mlflow_run_id": parent}
        tracker.metrics(parent, {f"average.{n}": r["average"] for n, r in sources.items() if r["average"] is not None})
        tracker.artifact(parent, write_summary(cfg, "study", summary))
    console.line(study_table(summary))
    return summary


def source_result(cfg: XdrayConfig) -> dict:
    """One source's teacher and student on the source task, and the student's test score on each target."""
    teacher, student, transfer = (read_summary(cfg, s) for s in ("teacher", "distill", "transfer"))

    def source_score(summary: dict) -> float:
        return summary["test"]["score"] if "metric" in summary else summary["test_accuracy"]

    return {"teacher_test": source_score(teacher), "student_test": source_score(student),
            "student_params": student["params"]["total"], "student_dir": student["model_dir"],
            "tasks": {name: {"metric": r["metric"], "score": r["test"]["score"]}
                      for name, r in transfer["tasks"].items()}}


def study_table(summary: dict) -> str:
    metrics = {t: m["metric"] for r in summary["sources"].values() for t, m in r["tasks"].items()}
    tasks = sorted(metrics)
    rows = []
    for name, r in summary["sources"].items():
        cells = [f"{r['tasks'][t]['score']:.4f}" if t in r["tasks"] else "(source)" for t in tasks]
        average = "" if r["average"] is None else f"{r['average']:.4f}"
        rows.append([name, f"{r['teacher_test']:.4f}", f"{r['student_test']:.4f}", f"{r['student_params'] / 1e6:.2f}M",
                     *cells, average])
    table = tabulate(rows, headers=["source", "teacher (source test)", "student (source test)", "params",
                                    *(f"{t} ({metrics[t]})" for t in tasks), "average (common targets)"],
                     disable_numparse=True)
    return f"\n{table}\n\nbest source: {summary['best']} (average over {', '.join(summary['common_tasks']) or 'none'})\n"
