"""`xdray transfer`: fine-tune a distilled student (or any HF encoder) on each target task, driver side.

Each task is one Ray Train + DeepSpeed job (``train.loop.worker_loop`` in the ``TransferRole``): a fresh head on
the student's encoder, one stage on the task's train split, early stopping on the task's dev metric with the
best epoch restored. The test split is scored once, here in the driver, on the exported model; its CPU
latency is measured in a Ray task (``common.latency.measure_latency``). A task whose result exists (same inputs
and settings) is skipped.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
from tabulate import tabulate

from xdray.common.files import read_json, write_json, write_summary
from xdray.common.latency import measure_latency
from xdray.common.tracking import Tracker, pipeline_task
from xdray.config import StageConfig, TrainerConfig, TransferTask, XdrayConfig
from xdray.console import console
from xdray.export.parity import compare_variants, row_length, row_text
from xdray.train.engine import TrainSpec
from xdray.train.fit import export_student, fit, make_spec, rows_source, run_name
from xdray.transfer.metrics import headline
from xdray.transfer.model import load_saved, task_loss
from xdray.transfer.role import TransferRole
from xdray.transfer.tasks import TaskData, load_task


def run_transfer(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    tc, student = cfg.transfer, cfg.transfer_student
    t0 = time.perf_counter()
    datas = {task.name: load_task(task, cfg.seed) for task in tc.tasks}  # every label problem before any training
    with tracker.run(cfg, "transfer", parent) as run_id:
        tracker.params(run_id, {"transfer": tc.model_dump(mode="json", exclude={"tasks"}), "student": student,
                                "tasks": ",".join(t.name for t in tc.tasks)})
        results = {task.name: _run_task(cfg, tracker, run_id, task, datas[task.name], student) for task in tc.tasks}
        summary = {"student": student, "tasks": results, "seconds": round(time.perf_counter() - t0, 1),
                   "mlflow_run_id": run_id}
        tracker.metrics(run_id, {f"{name}/test_{r['metric']}{suffix}": score for name, r in results.items()
                                 for suffix, score in _scores(r).items()})
        tracker.artifact(run_id, write_summary(cfg, "transfer", summary))
    console.line(results_table(summary))
    return summary


def _run_task(cfg: XdrayConfig, tracker: Tracker, parent: str, task: TransferTask, data: TaskData,
              student: str) -> dict:
    tc, out = cfg.transfer, cfg.step_dir("transfer") / task.name
    job = TaskJob(f"transfer-{task.name}", task, data, student, out, tc, tc.epochs, tc.patience, tc.latency_sentences,
                  tc.trust_remote_code)
    spec, name = job.spec(cfg)
    done = read_json(out / "result.json")
    if done and done.get("run_name") == name:
        console.line(f"  transfer {task.name}: complete, skipping ({out / 'result.json'})")
        return done
    with tracker.run(cfg, f"transfer/{task.name}", parent) as run_id:
        summary = job.run(cfg, tracker, run_id, spec, name)
        tracker.artifact(run_id, write_json(out / "result.json", summary))
    return summary


@dataclass
class TaskJob:
    """One task fine-tuned from ``init`` and scored: a transfer task on the student, or a token task's teacher
    on its backbone (token tags, QA spans). The model lands in ``out/model``."""

    label: str
    """The run's name before its hash, shown on the console."""
    task: TransferTask
    data: TaskData
    init: str
    out: Path
    trainer: TrainerConfig
    epochs: int
    patience: int | None
    latency_sentences: int
    trust_remote_code: bool

    def spec(self, cfg: XdrayConfig) -> tuple[TrainSpec, str]:
        """The worker spec and the run's name (the same for the same inputs and settings)."""
        task, data = self.task, self.data
        stage = StageConfig(name=task.name, data="train", loss=task_loss(data.worker_spec()), epochs=self.epochs,
                            patience=self.patience, monitor="dev_score")
        dev = pa.Table.from_pylist(sorted(data.dev, key=row_length))
        spec = make_spec(cfg, self.trainer, TransferRole(data.worker_spec()), self.init, [stage.model_dump()],
                         data.num_labels, dev, self.out / "scratch", "", max_length=task.max_length,
                         trust_remote_code=self.trust_remote_code)
        inputs = [p for p in (task.train, task.dev, task.test) if p is not None]
        inputs += [Path(self.init, f) for f in ("config.json", "model.safetensors") if Path(self.init).is_dir()]
        return spec, run_name(self.label, spec, self.trainer, inputs)

    def run(self, cfg: XdrayConfig, tracker: Tracker, run_id: str, spec: TrainSpec, name: str) -> dict:
        """Train on Ray, export the model, score test (and each extra test split) once here, time it."""
        task, data, out = self.task, self.data, self.out
        spec_task = data.worker_spec()
        t0 = time.perf_counter()
        spec.run_id = run_id
        tracker.params(run_id, {"task": task.model_dump(mode="json"), "type": data.type, "num_labels": data.num_labels,
                                "train_rows": len(data.train), "init": self.init})
        result = fit(spec, self.trainer, {"train": rows_source(data.train)}, out / "ray", name)
        model_dir = out / "model"
        trained = export_student(result, model_dir)
        test = evaluate_model(model_dir, data, task.max_length)
        by_language = {name: evaluate_model(model_dir, data, task.max_length, f"test.{name}") for name in data.tests}
        texts = [row_text(row) for row in data.test[:self.latency_sentences]]
        (ms,), node = measure_latency([model_dir], texts, task.max_length, [1],
                                      loader=partial(load_saved, task=spec_task))
        summary = {
            "type": data.type, "metric": headline(data.type), "test": test, "test_by_language": by_language,
            "dev_score": trained["dev_score"],
            "dev": trained["dev_metrics"], "params": trained["params"], "latency_ms": round(ms[1], 3),
            "latency_node": node,
            "labels": data.names, "rows": {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)},
            "train_samples_per_s": round(trained["samples_per_s"], 1), "workers": trained["world_size"],
            "seconds": round(time.perf_counter() - t0, 1), "history": trained["history"],
            "model_dir": str(model_dir), "run_name": name, "mlflow_run_id": run_id,
        }
        key = "mlflow_artifact_uri" if data.type == "question_answering" else "mlflow_model_uri"  # no QA flavor
        summary[key] = tracker.log_model(run_id, model_dir, texts[:2], task=pipeline_task(data.type))
        tracker.metrics(run_id, {f"test_{k}": v for k, v in test.items() if k != "score"}
                        | {f"test_{k}.{name}": v for name, m in by_language.items() for k, v in m.items()
                           if k != "score"}
                        | {"latency_ms": summary["latency_ms"], "params_total": trained["params"]["total"]})
        shutil.rmtree(out / "scratch", ignore_errors=True)
        return summary


def evaluate_model(model_dir: Path, data: TaskData, max_length: int, split: str = "test") -> dict[str, float]:
    """The task's metrics of a saved model on one split (batches of similar length), in this process."""
    model, tokenizer = load_saved(str(model_dir), data.worker_spec())
    scored = compare_variants({"torch": model.eval()}, data, tokenizer, max_length, (split,), reference="torch")
    return scored["metrics"]["torch"][split]


def _scores(result: dict) -> dict[str, float]:
    """The headline test score, and one per extra test split (``.<name>``)."""
    return {"": result["test"]["score"]} | {f".{name}": m["score"] for name, m in result.get("test_by_language",
                                                                                             {}).items()}


def results_table(summary: dict) -> str:
    """One row per task; one column per extra test split (language) any task has."""
    languages = sorted({n for r in summary["tasks"].values() for n in r.get("test_by_language", {})})
    rows = []
    for name, r in summary["tasks"].items():
        extra = r.get("test_by_language", {})
        rows.append([name, r["type"], f"{r['metric']} {r['test']['score']:.4f}",
                     *(f"{extra[n]['score']:.4f}" if n in extra else "" for n in languages),
                     f"{r['dev_score']:.4f}", f"{r['params']['total'] / 1e6:.2f}M", f"{r['latency_ms']:.2f}"])
    table = tabulate(rows, headers=["task", "type", "test", *(f"test {n}" for n in languages), "dev", "params",
                                    "CPU ms/sentence (b1, 1 thread)"], disable_numparse=True)
    return f"\ntransfer of {summary['student']}\n{table}\n"
