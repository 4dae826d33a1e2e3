"""`xdray teacher` and `xdray distill`: the two Ray Train steps, driver side.

Both run ``train.worker_loop`` on a ``TorchTrainer``; they differ only in what the workers build (a
fine-tuned encoder or a student) and which stages they run. Test accuracy is measured once, at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import ray

from xdray.config import StudentConfig, TrainerConfig, XdrayConfig
from xdray.data.tables import LabeledSplit, read_labeled
from xdray.errors import XdrayError
from xdray.evaluate import test_accuracy
from xdray.runtime import write_summary
from xdray.tracking import Tracker, tracking_uri
from xdray.train import TrainSpec, export_student, fit


def load_splits(cfg: XdrayConfig) -> tuple[LabeledSplit, LabeledSplit, LabeledSplit]:
    train = read_labeled(cfg.data.train).subsample(cfg.data.max_train_rows, cfg.seed)
    dev, test = read_labeled(cfg.data.dev), read_labeled(cfg.data.test)
    num_labels = max(train.labels) + 1
    for name, split in (("dev", dev), ("test", test)):
        bad = sorted({y for y in split.labels if not 0 <= y < num_labels})
        if bad:
            raise XdrayError(
                f"data.{name}: labels {bad} do not occur in train (0..{num_labels - 1}); fix: use the same classes"
            )
    return train, dev, test


def make_spec(
    cfg: XdrayConfig, trainer: TrainerConfig, role: str, init: str, stages: list[dict], num_labels: int,
    dev: LabeledSplit, scratch: Path, run_id: str, student: StudentConfig | None = None,
) -> TrainSpec:
    return TrainSpec(
        role=role, init=init, stages=stages, num_labels=num_labels, max_length=cfg.data.max_length,
        batch_size=trainer.batch_size, lr=trainer.lr, deepspeed=trainer.deepspeed.model_dump(),
        dev_texts=dev.texts, dev_labels=dev.labels, scratch=str(scratch), seed=cfg.seed,
        student=student.model_dump() if student else None, tracking_uri=tracking_uri(cfg), run_id=run_id,
        trust_remote_code=cfg.teacher.trust_remote_code,
    )


def student_datasets(cfg: XdrayConfig, train: LabeledSplit, stages: list[dict]) -> dict:
    """The Ray datasets the stages read: the labelled transfer Parquet and/or the labeled train split."""
    sources = {s["data"] for s in stages}
    datasets = {}
    if "transfer" in sources:
        manifest = json.loads((cfg.labels_dir / "_manifest.json").read_text())
        if Path(manifest["teacher"]) != cfg.teacher_dir:
            raise XdrayError(
                f"distill.labels: {cfg.labels_dir} was labelled by {manifest['teacher']}, not {cfg.teacher_dir}; "
                "fix: relabel with `xdray label` or point label.teacher at that teacher"
            )
        datasets["transfer"] = ray.data.read_parquet(str(cfg.labels_dir), file_extensions=["parquet"])
    if "train" in sources:
        datasets["train"] = ray.data.from_items(train.rows())
    return datasets


def run_teacher(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    train, dev, test = load_splits(cfg)
    out = cfg.step_dir("teacher")
    tc = cfg.teacher
    stages = [{"name": "finetune", "data": "train", "loss": "ce", "epochs": tc.epochs}]
    with tracker.run(cfg, "teacher", parent) as run_id:
        tracker.params(run_id, {"teacher": tc.model_dump(mode="json"), "train_rows": len(train)})
        spec = make_spec(cfg, tc, "teacher", tc.backbone, stages, max(train.labels) + 1, dev, out / "scratch", run_id)
        t0 = time.perf_counter()
        result = fit(spec, tc, {"train": ray.data.from_items(train.rows())}, out / "ray", "teacher")
        trained = export_student(result, out / "model")
        summary = _finish(cfg, tracker, run_id, "teacher", out / "model", trained, test, time.perf_counter() - t0)
    return summary


def run_distill(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    train, dev, test = load_splits(cfg)
    out = cfg.step_dir("distill")
    dc = cfg.distill
    stages = [s.model_dump() for s in dc.stages]
    with tracker.run(cfg, "distill", parent) as run_id:
        tracker.params(run_id, {"distill": dc.model_dump(mode="json"), "teacher": str(cfg.teacher_dir)})
        spec = make_spec(
            cfg, dc, "student", str(cfg.teacher_dir), stages, max(train.labels) + 1, dev, out / "scratch", run_id,
            student=dc.student,
        )
        t0 = time.perf_counter()
        result = fit(spec, dc, student_datasets(cfg, train, stages), out / "ray", "distill")
        trained = export_student(result, out / "student")
        summary = _finish(cfg, tracker, run_id, "distill", out / "student", trained, test, time.perf_counter() - t0)
    return summary


def _finish(
    cfg: XdrayConfig, tracker: Tracker, run_id: str, step: str, model_dir: Path, trained: dict,
    test: LabeledSplit, seconds: float,
) -> dict:
    summary = {
        "test_accuracy": test_accuracy(model_dir, test, cfg.data.max_length),
        "dev_accuracy": trained["dev_accuracy"],
        "params": trained["params"],
        "train_samples_per_s": round(trained["samples_per_s"], 1),
        "workers": trained["world_size"],
        "worker_nodes": trained["worker_nodes"],
        "seconds": round(seconds, 1),
        "history": trained["history"],
        "model_dir": str(model_dir),
        "mlflow_run_id": run_id,
    }
    tracker.metrics(run_id, {"test_accuracy": summary["test_accuracy"], "final_dev_accuracy": summary["dev_accuracy"],
                             "params_total": summary["params"]["total"], "seconds": summary["seconds"]})
    tracker.artifact(run_id, model_dir / "xdray_train.json")
    shutil.rmtree(model_dir.parent / "scratch", ignore_errors=True)
    tracker.artifact(run_id, write_summary(cfg, step, summary))
    return summary
