"""The driver side of a Ray Train + DeepSpeed job: the worker spec from the config, the run's name, the
``TorchTrainer`` around ``loop.worker_loop``, and the trained model copied out of its checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pyarrow as pa
import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from xdray.common.files import file_stamp, read_json, replace_dir, staging_dir, write_summary
from xdray.common.hf import load_classifier
from xdray.common.tracking import Tracker, pipeline_task, tracking_uri
from xdray.config import TrainerConfig, XdrayConfig
from xdray.console import console
from xdray.data.tables import LabeledSplit, read_labeled
from xdray.distill.batches import accuracy, predict
from xdray.train.engine import TrainSpec
from xdray.train.loop import PROGRESS, worker_loop
from xdray.train.order import Rows
from xdray.train.role import Role


def make_spec(
    cfg: XdrayConfig, trainer: TrainerConfig, role: Role, init: str, stages: list[dict], num_labels: int,
    dev: pa.Table, scratch: Path, run_id: str, max_length: int | None = None, trust_remote_code: bool | None = None,
) -> TrainSpec:
    """The worker spec of one training job; ``max_length`` and ``trust_remote_code`` default to the source
    task's (data, teacher), which a transfer-only config does not have."""
    return TrainSpec(
        role=role, init=init, stages=stages, num_labels=num_labels,
        max_length=max_length if max_length is not None else cfg.data.max_length,
        batch_size=trainer.batch_size, lr=trainer.lr,
        deepspeed=trainer.deepspeed.model_dump() | {"zero_stage": trainer.zero_stage},
        grad_accum=trainer.grad_accum, warmup_steps=trainer.warmup_steps, checkpoint_every=trainer.checkpoint_every,
        log_every=trainer.log_every,
        scratch=str(scratch), dev=ray.put(dev), seed=cfg.seed,
        representation=cfg.distill.representation.model_dump(),
        tracking_uri=tracking_uri(cfg), run_id=run_id,
        trust_remote_code=trust_remote_code if trust_remote_code is not None else cfg.teacher.trust_remote_code,
    )


def run_name(step: str, spec: TrainSpec, trainer_cfg: TrainerConfig, inputs: list[Path]) -> str:
    """``<step>-<hash>`` of everything that determines the run: a restarted job with the same config and inputs
    finds its own checkpoints (Ray Train resumes a reused ``RunConfig(name, storage_path)``), a changed one
    starts afresh instead of resuming someone else's."""
    plain = {f.name: getattr(spec, f.name) for f in fields(spec)
             if f.name not in ("dev", "train_data", "run_id", "tracking_uri")}
    key = {"spec": plain, "trainer": trainer_cfg.model_dump(mode="json"),
           "inputs": {str(p): file_stamp(p) for p in inputs if p.exists()}}
    return f"{step}-{hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]}"


def fit(
    spec: TrainSpec,
    trainer_cfg: TrainerConfig,
    datasets: dict,
    storage: Path,
    name: str,
    callbacks: list | None = None,
) -> ray.train.Result:
    """Run one training job on Ray Train and return its result (raises if the job failed). ``datasets``: each
    training set by name, as ``train.order.Rows``. Workers that die are replaced up to ``max_failures``
    times and resume from the last checkpoint."""
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        worker_loop,
        # keeps the ObjectRefs (dev, in-memory training sets) as they are
        train_loop_config={f.name: getattr(spec, f.name) for f in fields(spec)} | {"train_data": datasets},
        scaling_config=ScalingConfig(
            num_workers=trainer_cfg.workers,
            use_gpu=trainer_cfg.use_gpu,
            resources_per_worker={"CPU": trainer_cfg.cpus_per_worker, **({"GPU": 1} if trainer_cfg.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name, storage_path=str(storage), callbacks=callbacks or [],
            checkpoint_config=CheckpointConfig(num_to_keep=trainer_cfg.keep_checkpoints,
                                               checkpoint_score_attribute="dev_score", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=trainer_cfg.max_failures),
        ),
    )
    with console.progress(name.rsplit("-", 1)[0], "epochs", _poll(Path(spec.scratch) / PROGRESS)):
        return trainer.fit()


def rows_source(rows: list[dict]) -> Rows:
    """A training set of rows held in the object store (one copy per node, read zero-copy by the workers)."""
    return Rows(table=ray.put(pa.Table.from_pylist(rows)))


def _poll(path: Path):
    """What the console bar shows of a run: epochs done, and the phase, step, loss and dev score."""

    def poll() -> tuple[int, int | None, str]:
        state = read_json(path)
        if state is None:
            return 0, None, "starting workers"
        if not state["phase"]:
            return state["done"], state["epochs"], "first steps"
        loss = f" loss {state['loss']:.3g}" if state["loss"] is not None else ""
        dev = f" dev {state['dev']:.3f}" if state["dev"] is not None else ""
        return state["done"], state["epochs"], f"{state['phase']} step {state['step']}{loss}{dev}"

    return poll


def export_student(result: ray.train.Result, dest: Path) -> dict:
    """Copy the consolidated HF directory out of the Ray checkpoint; returns the worker's summary."""
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
    tmp = staging_dir(dest)
    result.checkpoint.to_directory(str(tmp))
    replace_dir(tmp, dest)
    return json.loads((dest / "xdray_train.json").read_text())


def test_accuracies(model_dir: Path, splits: dict[str, LabeledSplit], max_length: int) -> dict[str, float]:
    """Accuracy of the saved model (as it serves: its own tokenizer) on each split."""
    model, tokenizer = load_classifier(str(model_dir))
    return {name: accuracy(predict(model, tokenizer, s.texts, max_length, pairs=s.pairs), s.labels)
            for name, s in splits.items()}


def accuracy_scores(cfg: XdrayConfig, test: LabeledSplit, model_dir: Path) -> tuple[dict, dict]:
    """A sequence classifier's test figures, for the summary and for MLflow: accuracy on test and on each extra
    test split (``data.tests``: languages)."""
    scores = test_accuracies(model_dir, {"": test} | {n: read_labeled(p) for n, p in cfg.data.tests.items()},
                             cfg.data.max_length)
    accuracy = scores.pop("")
    return ({"test_accuracy": accuracy, **({"test_by_language": scores} if scores else {})},
            {"test_accuracy": accuracy} | {f"test_accuracy.{name}": value for name, value in scores.items()})


def finish_classifier(
    cfg: XdrayConfig, tracker: Tracker, run_id: str, step: str, result: ray.train.Result, seconds: float,
    model_dir: Path, log_model: bool, score: Callable[[Path], tuple[dict, dict]], examples: list[str],
    extra: dict | None = None,
) -> dict:
    """The end of a source-task job (teacher, distill): export the model to ``model_dir``, score it on test
    once (``score``: the summary's test figures and MLflow's, e.g. ``accuracy_scores``), log it (as an MLflow
    model with ``log_model``, ``examples`` as its input example; the distilled student is also registered under
    ``mlflow.register`` when no export follows), and write the step's summary."""
    trained = export_student(result, model_dir)
    checkpoints = [str(c.path) for c, _ in result.best_checkpoints]
    test, test_metrics = score(model_dir)
    token = "metric" in test  # scored by a task metric (entity F1, SQuAD F1): dev accuracy means nothing there
    summary = {
        **test,
        **({} if token else {"dev_accuracy": trained["dev_accuracy"]}),
        "dev_score": trained["dev_score"],
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
        **(extra or {}),
    }
    tracker.metrics(run_id, test_metrics | {"final_dev_score": summary["dev_score"],
                                            "params_total": summary["params"]["total"], "seconds": summary["seconds"]}
                    | ({} if token else {"final_dev_accuracy": summary["dev_accuracy"]}))
    tracker.artifact(run_id, model_dir / "xdray_train.json")
    if log_model:
        kind = test.get("type", "classification")
        key = "mlflow_artifact_uri" if kind == "question_answering" else "mlflow_model_uri"  # no QA flavor
        summary[key] = tracker.log_model(run_id, model_dir, examples, task=pipeline_task(kind))
        if step == "distill" and cfg.mlflow.register and cfg.export is None:  # with an export, its int8 model is
            summary["registered"] = tracker.register(run_id, "model", cfg.mlflow.register)  # the one registered
    shutil.rmtree(model_dir.parent / "scratch", ignore_errors=True)
    tracker.artifact(run_id, write_summary(cfg, step, summary))
    return summary
