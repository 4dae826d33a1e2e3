"""`xdray teacher`, driver side: fine-tune the backbone (a local HF directory or hub id) with a fresh head for
the source task on its train split, as one Ray Train + DeepSpeed job. Sequence classification is scored by
accuracy; a token task (``data.task: token_classification``) is trained and scored as a transfer task is
(first-sub-word tags, entity F1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

from xdray.common.files import write_summary
from xdray.common.hf import load_classifier
from xdray.common.tracking import Tracker
from xdray.config import StageConfig, XdrayConfig
from xdray.data.tables import load_splits, text_table
from xdray.distill.objective import DistillModule
from xdray.train.engine import TrainSpec
from xdray.train.fit import accuracy_scores, finish_classifier, fit, make_spec, rows_source, run_name
from xdray.train.role import Built, Role

LATENCY_SENTENCES = 64


@dataclass(frozen=True)
class TeacherRole(Role):
    """The backbone under a new head of ``spec.num_labels`` classes."""

    def build(self, spec: TrainSpec) -> Built:
        model, tokenizer = load_classifier(spec.init, spec.num_labels, spec.trust_remote_code)
        return Built(DistillModule(model, None, 0), tokenizer)


def run_teacher(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    if cfg.data.task != "classification":
        return _task_teacher(cfg, tracker, parent)
    train, dev, test = load_splits(cfg)
    out = cfg.step_dir("teacher")
    tc = cfg.teacher
    stages = [StageConfig(name="finetune", data="train", loss="ce", epochs=tc.epochs).model_dump()]
    with tracker.run(cfg, "teacher", parent) as run_id:
        tracker.params(run_id, {"teacher": tc.model_dump(mode="json"), "train_rows": len(train)})
        spec = make_spec(cfg, tc, TeacherRole(), tc.backbone, stages, max(train.labels) + 1, text_table(dev),
                         out / "scratch", run_id)
        t0 = time.perf_counter()
        name = run_name("teacher", spec, tc, [cfg.data.train, cfg.data.dev])
        result = fit(spec, tc, {"train": rows_source(train.rows())}, out / "ray", name)
        summary = finish_classifier(cfg, tracker, run_id, "teacher", result, time.perf_counter() - t0, out / "model",
                                    log_model=True, score=partial(accuracy_scores, cfg, test), examples=test.texts[:2])
    return summary


def _task_teacher(cfg: XdrayConfig, tracker: Tracker, parent: str | None) -> dict:
    from xdray.transfer.run import TaskJob
    from xdray.transfer.tasks import load_task

    tc, task = cfg.teacher, cfg.source_task()
    job = TaskJob("teacher", task, load_task(task, cfg.seed), tc.backbone, cfg.step_dir("teacher"), tc, tc.epochs,
                  None, LATENCY_SENTENCES, tc.trust_remote_code)
    spec, name = job.spec(cfg)
    with tracker.run(cfg, "teacher", parent) as run_id:
        tracker.params(run_id, {"teacher": tc.model_dump(mode="json")})
        summary = job.run(cfg, tracker, run_id, spec, name)
        tracker.artifact(run_id, write_summary(cfg, "teacher", summary))
    return summary
