"""`xdray teacher` and `xdray distill`: the two Ray Train steps, driver side.

Both run ``train.worker_loop`` on a ``TorchTrainer``; they differ only in what the workers build (a
fine-tuned encoder or a student) and which stages they run. Test accuracy is measured once, at the end.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from transformers import AutoConfig, PretrainedConfig

from xdray.config import StageConfig, StudentConfig, TrainerConfig, XdrayConfig
from xdray.data.tables import LabeledSplit, load_splits
from xdray.errors import XdrayError
from xdray.evaluate import test_accuracy
from xdray.label import check_labels
from xdray.models.student import check_student
from xdray.runtime import write_summary
from xdray.tracking import Tracker, tracking_uri
from xdray.engine import TrainSpec
from xdray.train import export_student, fit, run_name


def make_spec(
    cfg: XdrayConfig, trainer: TrainerConfig, role: str, init: str, stages: list[dict], num_labels: int,
    dev: pa.Table, scratch: Path, run_id: str, student: StudentConfig | None = None, student_dir: Path | None = None,
    task: dict | None = None, max_length: int | None = None, trust_remote_code: bool | None = None,
) -> TrainSpec:
    """The worker spec of one training job; ``max_length`` and ``trust_remote_code`` default to the source
    task's (data, teacher), which a transfer-only config does not have."""
    return TrainSpec(
        role=role, init=init, stages=stages, num_labels=num_labels,
        max_length=max_length if max_length is not None else cfg.data.max_length,
        batch_size=trainer.batch_size, lr=trainer.lr, deepspeed=trainer.deepspeed.model_dump(),
        grad_accum=trainer.grad_accum, warmup_steps=trainer.warmup_steps, checkpoint_every=trainer.checkpoint_every,
        log_every=trainer.log_every,
        scratch=str(scratch), dev=ray.put(dev), seed=cfg.seed, student=student.model_dump() if student else None,
        representation=cfg.distill.representation.model_dump(), teacher_mode=cfg.distill.teacher_mode,
        tracking_uri=tracking_uri(cfg), run_id=run_id,
        trust_remote_code=trust_remote_code if trust_remote_code is not None else cfg.teacher.trust_remote_code,
        student_dir=str(student_dir) if student_dir else None, task=task,
    )


def text_table(split: LabeledSplit) -> pa.Table:
    """A labeled split as text rows, sorted by length so dev batches carry little padding."""
    rows = sorted(split.rows(), key=lambda r: len(r["text"]) + len(r.get("text_pair", "")))
    return pa.Table.from_pylist(rows)


def student_data(cfg: XdrayConfig, train: LabeledSplit, dev: LabeledSplit, stages: list[dict],
                 student_layers: list[int]) -> tuple[dict, pa.Table]:
    """The Ray datasets a distillation reads (the labelled transfer Parquet and/or the labeled train split) and
    its dev table — with the teacher's outputs from the labelling job when targets come from Parquet."""
    sources = {s["data"] for s in stages}
    datasets, dev_table = {}, text_table(dev)
    if "train" in sources:
        datasets["train"] = ray.data.from_items(train.rows())
    if "transfer" in sources:
        check_labels(cfg, student_layers, any("hidden" in s["loss"] for s in stages))
        transfer = ray.data.read_parquet(str(cfg.labels_dir / "transfer"), file_extensions=["parquet"])
        keep = in_memory(cfg.distill.transfer_cache, cfg.labels_dir / "transfer")
        datasets["transfer"] = transfer.materialize() if keep else transfer
        if cfg.distill.teacher_mode == "offline":
            dev_table = pq.read_table(cfg.labels_dir / "dev")
    return datasets, dev_table


def in_memory(mode: str, parquet_dir: Path) -> bool:
    """Whether the transfer set is read into the object store once rather than from its files every epoch."""
    if mode != "auto":
        return mode == "memory"
    size = sum(f.stat().st_size for f in parquet_dir.rglob("*.parquet"))
    return size * 8 < ray.cluster_resources().get("object_store_memory", 0)


def check_student_fits(cfg: XdrayConfig, student: StudentConfig, hidden: bool,
                       teacher: PretrainedConfig | None = None) -> None:
    """The student's init and depth suit the teacher (``hidden``: it trains with the hidden loss); one line,
    before any worker starts."""
    teacher = teacher or AutoConfig.from_pretrained(cfg.teacher_dir)
    check_student(student, teacher)
    if student.layers > teacher.num_hidden_layers and hidden:
        raise XdrayError(
            f"distill.student.layers={student.layers}: the hidden loss maps student layers onto the teacher's "
            f"{teacher.num_hidden_layers}; fix: use at most {teacher.num_hidden_layers} layers"
        )


def run_teacher(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    train, dev, test = load_splits(cfg)
    out = cfg.step_dir("teacher")
    tc = cfg.teacher
    stages = [StageConfig(name="finetune", data="train", loss="ce", epochs=tc.epochs).model_dump()]
    with tracker.run(cfg, "teacher", parent) as run_id:
        tracker.params(run_id, {"teacher": tc.model_dump(mode="json"), "train_rows": len(train)})
        spec = make_spec(cfg, tc, "teacher", tc.backbone, stages, max(train.labels) + 1, text_table(dev),
                         out / "scratch", run_id)
        t0 = time.perf_counter()
        name = run_name("teacher", spec, tc, [cfg.data.train, cfg.data.dev])
        result = fit(spec, tc, {"train": ray.data.from_items(train.rows())}, out / "ray", name)
        summary = _finish(cfg, tracker, run_id, "teacher", result, test, time.perf_counter() - t0)
    return summary


def run_distill(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    train, dev, test = load_splits(cfg)
    out = cfg.step_dir("distill")
    dc = cfg.distill
    stages = [s.model_dump() for s in dc.stages]
    check_student_fits(cfg, dc.student, dc.uses_hidden)
    datasets, dev_table = student_data(cfg, train, dev, stages, [dc.student.layers])
    with tracker.run(cfg, "distill", parent) as run_id:
        tracker.params(run_id, {"distill": dc.model_dump(mode="json"), "teacher": str(cfg.teacher_dir)})
        spec = make_spec(cfg, dc, "student", str(cfg.teacher_dir), stages, max(train.labels) + 1, dev_table,
                         out / "scratch", run_id, student=dc.student)
        t0 = time.perf_counter()
        name = run_name("distill", spec, dc, [cfg.data.train, cfg.data.dev, cfg.labels_dir / "_manifest.json"])
        result = fit(spec, dc, datasets, out / "ray", name)
        summary = _finish(cfg, tracker, run_id, "distill", result, test, time.perf_counter() - t0)
    return summary


def _finish(
    cfg: XdrayConfig, tracker: Tracker, run_id: str, step: str, result, test: LabeledSplit, seconds: float,
) -> dict:
    model_dir = cfg.step_dir(step) / ("model" if step == "teacher" else "student")
    trained = export_student(result, model_dir)
    checkpoints = [str(c.path) for c, _ in result.best_checkpoints]
    summary = {
        "test_accuracy": test_accuracy(model_dir, test, cfg.data.max_length),
        "dev_accuracy": trained["dev_accuracy"],
        "params": trained["params"],
        "train_samples_per_s": round(trained["samples_per_s"], 1),
        "workers": trained["world_size"],
        "worker_nodes": trained["worker_nodes"],
        "seconds": round(seconds, 1),
        "phases": trained["phases"],
        "resumed_from_step": trained["resumed_from_step"],
        "teacher_forwards": trained["teacher_forwards"],
        "checkpoints": checkpoints,
        "history": trained["history"],
        "model_dir": str(model_dir),
        "mlflow_run_id": run_id,
    }
    tracker.metrics(run_id, {"test_accuracy": summary["test_accuracy"], "final_dev_accuracy": summary["dev_accuracy"],
                             "params_total": summary["params"]["total"], "seconds": summary["seconds"]})
    tracker.artifact(run_id, model_dir / "xdray_train.json")
    if step == "distill":
        summary["mlflow_model_uri"] = tracker.log_model(run_id, model_dir)
    shutil.rmtree(model_dir.parent / "scratch", ignore_errors=True)
    tracker.artifact(run_id, write_summary(cfg, step, summary))
    return summary
