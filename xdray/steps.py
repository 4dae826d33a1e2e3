"""`xdray teacher` and `xdray distill`: the two Ray Train steps, driver side.

Both run ``train.worker_loop`` on a ``TorchTrainer``; they differ only in what the workers build (a
fine-tuned encoder or a student) and which stages they run. Test accuracy is measured once, at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from transformers import AutoConfig

from xdray.config import StageConfig, StudentConfig, TrainerConfig, XdrayConfig
from xdray.data.tables import LabeledSplit, read_labeled
from xdray.distill.losses import layer_map
from xdray.errors import XdrayError
from xdray.evaluate import test_accuracy
from xdray.label import SCHEMA_VERSION
from xdray.models.student import check_student
from xdray.runtime import write_summary
from xdray.tracking import Tracker, tracking_uri
from xdray.train import TrainSpec, export_student, fit


def load_splits(cfg: XdrayConfig) -> tuple[LabeledSplit, LabeledSplit, LabeledSplit]:
    splits = []
    for name in ("train", "dev", "test"):
        split = read_labeled(getattr(cfg.data, name))
        if cfg.data.pairs and split.pairs is None:
            raise XdrayError(f"data.{name}: data.pairs is true but the file has no text_pair column; "
                             "fix: add the column or set data.pairs: false")
        splits.append(split if cfg.data.pairs else LabeledSplit(split.texts, split.labels))
    train, dev, test = splits
    train = train.subsample(cfg.data.max_train_rows, cfg.seed)
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
    dev: pa.Table, scratch: Path, run_id: str, student: StudentConfig | None = None,
) -> TrainSpec:
    return TrainSpec(
        role=role, init=init, stages=stages, num_labels=num_labels, max_length=cfg.data.max_length,
        batch_size=trainer.batch_size, lr=trainer.lr, deepspeed=trainer.deepspeed.model_dump(),
        scratch=str(scratch), dev=ray.put(dev), seed=cfg.seed, student=student.model_dump() if student else None,
        representation=cfg.distill.representation.model_dump(), teacher_mode=cfg.distill.teacher_mode,
        tracking_uri=tracking_uri(cfg), run_id=run_id, trust_remote_code=cfg.teacher.trust_remote_code,
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
        check_labels(cfg, stages, student_layers)
        datasets["transfer"] = ray.data.read_parquet(str(cfg.labels_dir / "transfer"), file_extensions=["parquet"])
        if cfg.distill.teacher_mode == "offline":
            dev_table = pq.read_table(cfg.labels_dir / "dev")
    return datasets, dev_table


def check_labels(cfg: XdrayConfig, stages: list[dict], student_layers: list[int]) -> dict:
    """Refuse labelled data that does not fit this distillation, before any worker starts."""
    path = cfg.labels_dir / "_manifest.json"
    manifest = json.loads(path.read_text())
    relabel = "fix: relabel with `xdray label`"
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise XdrayError(f"distill.labels: {path} has schema {manifest.get('schema_version')}, this xdray reads "
                         f"{SCHEMA_VERSION}; {relabel}")
    if Path(manifest["teacher"]) != cfg.teacher_dir:
        raise XdrayError(
            f"distill.labels: {cfg.labels_dir} was labelled by {manifest['teacher']}, not {cfg.teacher_dir}; "
            f"{relabel} or point label.teacher at that teacher"
        )
    if cfg.distill.teacher_mode == "offline" and any("hidden" in s["loss"] for s in stages):
        need = sorted(set(hidden_layers_needed(cfg, manifest["teacher_layers"], student_layers)))
        missing = sorted(set(need) - set(manifest["hidden_layers"]))
        if missing:
            raise XdrayError(
                f"distill.labels: the hidden loss needs teacher layers {need}, the labels store "
                f"{manifest['hidden_layers']}; {relabel} (label.hidden_states: auto or all) or set "
                "distill.teacher_mode: online"
            )
    return manifest


def hidden_layers_needed(cfg: XdrayConfig, teacher_layers: int, student_layers: list[int]) -> list[int]:
    """Teacher hidden-state indices that the layer map pairs with students of these depths."""
    mode = cfg.distill.representation.layer_map
    return sorted({k for n in student_layers if n <= teacher_layers for k in layer_map(n, teacher_layers, mode)})


def _check_student(cfg: XdrayConfig, student: StudentConfig) -> None:
    teacher = AutoConfig.from_pretrained(cfg.teacher_dir)
    check_student(student, teacher)
    if student.layers > teacher.num_hidden_layers and cfg.distill.uses_hidden:
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
        result = fit(spec, tc, {"train": ray.data.from_items(train.rows())}, out / "ray", "teacher")
        trained = export_student(result, out / "model")
        summary = _finish(cfg, tracker, run_id, "teacher", out / "model", trained, test, time.perf_counter() - t0)
    return summary


def run_distill(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    train, dev, test = load_splits(cfg)
    out = cfg.step_dir("distill")
    dc = cfg.distill
    stages = [s.model_dump() for s in dc.stages]
    _check_student(cfg, dc.student)
    datasets, dev_table = student_data(cfg, train, dev, stages, [dc.student.layers])
    with tracker.run(cfg, "distill", parent) as run_id:
        tracker.params(run_id, {"distill": dc.model_dump(mode="json"), "teacher": str(cfg.teacher_dir)})
        spec = make_spec(cfg, dc, "student", str(cfg.teacher_dir), stages, max(train.labels) + 1, dev_table,
                         out / "scratch", run_id, student=dc.student)
        t0 = time.perf_counter()
        result = fit(spec, dc, datasets, out / "ray", "distill")
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
        "phases": trained.get("phases", []),
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
