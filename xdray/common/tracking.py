"""MLflow at the edge: one tracking URI per output directory, runs nested as pipeline → step → trial.

We talk to MLflow through ``MlflowClient`` with explicit run ids rather than the fluent API's global active
run, because runs are written from the driver, from Ray Train rank 0 and from Tune trial drivers.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from xdray import __version__
from xdray.config import XdrayConfig

KEY_TAG = "xdray.key"
VERSION_TAG = "xdray.version"  # the code that wrote the run: on a cluster, the submitting client's (py_modules)


def tracking_uri(cfg: XdrayConfig) -> str:
    """The config's URI, else MLflow's own MLFLOW_TRACKING_URI, else a SQLite store in the output directory."""
    return cfg.mlflow_uri


def experiment_id(client: MlflowClient, cfg: XdrayConfig) -> str:
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is not None:
        return exp.experiment_id
    # with a local store, artifacts go beside it (absolute: every process has its own working directory);
    # with a server, the server decides where artifacts live
    location = (cfg.output_dir / "mlartifacts").as_uri() if tracking_uri(cfg) == cfg.local_store else None
    return client.create_experiment(cfg.mlflow.experiment, artifact_location=location)


def pipeline_task(task_type: str) -> str:
    """The Hugging Face pipeline task an MLflow model of a task type is logged for (``Tracker.log_model``)."""
    return {"token_classification": "token-classification",
            "question_answering": "question-answering"}.get(task_type, "text-classification")


class Tracker:
    """Thin helper around one tracking URI; all methods take explicit run ids."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = MlflowClient(uri)

    @classmethod
    def for_config(cls, cfg: XdrayConfig) -> Tracker:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        return cls(tracking_uri(cfg))

    @contextmanager
    def run(self, cfg: XdrayConfig, name: str, parent: str | None = None, key: str | None = None) -> Iterator[str]:
        """Open a run (a child of ``parent`` if given); it ends FINISHED, or FAILED if the body raises. With a
        ``key``, a run opened earlier with the same key is reopened instead (a resumed search and its trials)."""
        run_id = self.find(cfg, key) if key else None
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {VERSION_TAG: __version__, **({"mlflow.parentRunId": parent} if parent else {})}
            if key:
                tags[KEY_TAG] = key
            run_id = self.client.create_run(experiment_id(self.client, cfg), run_name=name, tags=tags).info.run_id
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")

    def find(self, cfg: XdrayConfig, key: str) -> str | None:
        runs = self.client.search_runs([experiment_id(self.client, cfg)], f"tags.`{KEY_TAG}` = '{key}'",
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def params(self, run_id: str, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in _flatten(params).items()]
        for lo in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[lo : lo + 100])

    def metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in _flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def artifact(self, run_id: str, path: Path, subdir: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), subdir)
        else:
            self.client.log_artifact(run_id, str(path), subdir)

    def log_model(self, run_id: str, model_dir: Path, examples: list[str], name: str = "model",
                  task: str = "text-classification") -> str:
        """An HF directory as an MLflow ``transformers`` model (``text-classification`` or ``token-classification``)
        among the run's artifacts, with a signature and ``examples`` as its input example; returns its ``runs:/``
        URI (``mlflow.transformers.load_model`` / ``mlflow.pyfunc.load_model``). Saved with the flavor and logged
        with this client, so no process-wide MLflow state changes. Requirements are pinned here: MLflow's own
        inference would import torchvision. ``question-answering``: transformers 5 has no QA pipeline (so MLflow no
        flavor for it), and the HF directory itself is logged, to load with ``AutoModelForQuestionAnswering``."""
        if task == "question-answering":
            self.client.log_artifacts(run_id, str(model_dir), name)
            return f"runs:/{run_id}/{name}"
        import mlflow.transformers
        import torch
        import transformers
        from mlflow.models import infer_signature
        from transformers import AutoTokenizer, pipeline

        from xdray.common.hf import head_class

        head = head_class(task.replace("-", "_"))
        components = {"model": head.from_pretrained(model_dir), "tokenizer": AutoTokenizer.from_pretrained(model_dir)}
        predicted = pipeline(task, **components)(examples)
        signature = infer_signature(examples, [_plain(p) for p in predicted])
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.transformers.save_model(components, f"{tmp}/{name}", task=task, signature=signature,
                                           input_example=examples, pip_requirements=requirements)
            self.client.log_artifacts(run_id, f"{tmp}/{name}", name)
        return f"runs:/{run_id}/{name}"

    def log_onnx_pyfunc(self, run_id: str, export_dir: Path, example, name: str = "model") -> str:
        """An export folder as an MLflow pyfunc that serves text with ONNX Runtime (``xdray.export.serving``, copied
        into the model: loading it needs no xdray). The signature comes from predicting ``example`` (a DataFrame)."""
        import importlib.util

        import mlflow.pyfunc
        import onnxruntime
        import tokenizers
        import transformers

        serving = importlib.util.find_spec("xdray.export.serving").origin  # a file, not imported: it sets MLflow's model

        requirements = [f"onnxruntime=={onnxruntime.__version__}", f"transformers=={transformers.__version__}",
                        f"tokenizers=={tokenizers.__version__}", "numpy", "pandas"]
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pyfunc.save_model(f"{tmp}/{name}", python_model=serving,
                                     artifacts={"export": str(export_dir)}, input_example=example,
                                     pip_requirements=requirements)
            self.client.log_artifacts(run_id, f"{tmp}/{name}", name)
        return f"runs:/{run_id}/{name}"

    def register(self, run_id: str, artifact_path: str, name: str, alias: str = "champion") -> str:
        """A new version of registered model ``name`` from the run's logged model, with ``alias`` moved onto it;
        returns its ``models:/name@alias`` URI."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(name, source, run_id=run_id)
        self.client.set_registered_model_alias(name, alias, version.version)
        return f"models:/{name}@{alias}"


def _plain(prediction):
    """A pipeline's prediction in the types a signature knows (token pipelines give numpy scalars)."""
    if isinstance(prediction, list):
        return [_plain(p) for p in prediction]
    return {k: v.item() if hasattr(v, "item") else v for k, v in prediction.items()}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out
