"""One typed config tree for every xdray command; the YAML files in ``jobs/`` mirror it 1:1. Each section lives in
the module of its pipeline step (data, label, distill, search, transfer); this module is the root and the loader.

Validation happens here, before any Ray work starts, and every problem becomes one line that names the
key and the fix (``ConfigError``). Relative paths are resolved against the current directory at load time,
because Ray workers run in other directories.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from xdray.config.base import ConfigError, Section, looks_local, one_line
from xdray.config.data import CORPUS_FORMATS, CleaningConfig, DataConfig, TransferSource
from xdray.config.distill import (
    REPRESENTATION_LOSSES,
    TEACHER_LOSSES,
    DistillConfig,
    LossName,
    RepresentationConfig,
    StageConfig,
    StudentConfig,
)
from xdray.config.export import MODEL_KEYWORDS, ExportConfig, ExportLatencyConfig, Int8Config
from xdray.config.label import LabelConfig, TeacherConfig
from xdray.config.search import (
    OBJECTIVES,
    SEARCH_DIMENSIONS,
    AshaConfig,
    BudgetConfig,
    LatencyConfig,
    SearchConfig,
    SearchSpace,
)
from xdray.config.study import StudyConfig
from xdray.config.trainer import DeepSpeedConfig, TrainerConfig
from xdray.config.transfer import GLUE_PRESETS, TASK_FORMATS, TASK_TYPES, TransferConfig, TransferTask

__all__ = [
    "CORPUS_FORMATS", "GLUE_PRESETS", "OBJECTIVES", "REPRESENTATION_LOSSES", "SEARCH_DIMENSIONS", "TASK_FORMATS",
    "TASK_TYPES", "TEACHER_LOSSES", "AshaConfig", "BudgetConfig", "CleaningConfig", "ConfigError", "DataConfig",
    "DeepSpeedConfig", "DistillConfig", "ExportConfig", "ExportLatencyConfig", "Int8Config", "LabelConfig", "LatencyConfig", "LossName", "MlflowConfig", "RayConfig",
    "RepresentationConfig", "SearchConfig", "SearchSpace", "StageConfig", "StudentConfig", "StudyConfig", "TeacherConfig",
    "TrainerConfig", "TransferConfig", "TransferSource", "TransferTask", "XdrayConfig", "load_config", "load_raw",
    "looks_local", "validate_config",
]


class RayConfig(Section):
    address: str | None = None
    """Ray cluster address (``auto``, ``ray://host:10001``); None starts a local Ray instance."""
    num_cpus: int | None = Field(None, ge=1)
    """Logical CPUs of a local instance; None = max(4, cores) so Ray Data tasks are not starved by workers."""


with warnings.catch_warnings():  # pydantic warns that `register` shadows ABCMeta.register, a class-level method
    warnings.simplefilter("ignore", UserWarning)  # that instances never see: the field reads and validates as usual

    class MlflowConfig(Section):
        tracking_uri: str | None = None
        """None = $MLFLOW_TRACKING_URI if set, else a SQLite store at <output_dir>/mlflow.db (artifacts beside it)."""
        experiment: str = "xdray"
        """MLflow experiment name."""
        register: str | None = None
        """Register the exported model (the int8 ONNX pyfunc; without an export section, the distilled student) in
        MLflow's model registry under this name, with the alias ``champion`` on the new version."""


class XdrayConfig(Section):
    output_dir: Path
    """Where every step writes (`<output_dir>/<step>/`); created if missing."""
    seed: int = 0
    """Seeds subsampling, shuffling, initialisation and the search sampler."""
    ray: RayConfig = RayConfig()
    mlflow: MlflowConfig = MlflowConfig()
    data: DataConfig | None = None
    """The source task and transfer corpora: required by teacher, label, distill, search and the pipeline."""
    teacher: TeacherConfig | None = None
    """Required with ``data``."""
    label: LabelConfig = LabelConfig()
    distill: DistillConfig = DistillConfig()
    search: SearchConfig = SearchConfig()
    transfer: TransferConfig | None = None
    """Target tasks for ``xdray transfer`` (and the pipeline's last step when present)."""
    export: ExportConfig | None = None
    """``xdray export``: ONNX fp32 + int8 of a trained model (and the pipeline's last step when present)."""
    study: StudyConfig | None = None
    """``xdray study``: one student per source task over the same transfer corpora, measured on ``transfer.tasks``."""

    @model_validator(mode="before")
    @classmethod
    def _has_a_job(cls, raw: Any) -> Any:
        """A config distils (data + teacher), transfers, or both; anything else is missing its core."""
        if isinstance(raw, dict) and not raw.get("transfer"):
            for key in ("data", "teacher"):
                if raw.get(key) is None:
                    raise ValueError(f"{key}: required key is missing; fix: add it to the config (see "
                                     "jobs/quickstart.yaml), or a transfer section for a transfer-only job")
        return raw

    @model_validator(mode="after")
    def _resolve_paths(self) -> XdrayConfig:
        """Make every path absolute now: Ray workers and Tune trials run in other working directories."""
        object.__setattr__(self, "output_dir", self.output_dir.expanduser().resolve())
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir: {self.output_dir} is a file, not a directory; fix: point output_dir at a "
                             "directory (it is created if missing)")
        d = self.data
        for key in ("train", "dev", "test"):
            if d is not None:
                object.__setattr__(d, key, getattr(d, key).expanduser().resolve())
            for task in self.transfer.tasks if self.transfer else ():
                if getattr(task, key) is not None:
                    object.__setattr__(task, key, getattr(task, key).expanduser().resolve())
        for source in [*(d.transfer if d is not None else ()), *(self.study.transfer_pairs if self.study else ())]:
            if source.path is not None:
                object.__setattr__(source, "path", source.path.expanduser().resolve())
        if self.label.teacher is not None:
            object.__setattr__(self.label, "teacher", self.label.teacher.expanduser().resolve())
        if self.distill.labels is not None:
            object.__setattr__(self.distill, "labels", self.distill.labels.expanduser().resolve())
        if self.teacher is not None and looks_local(self.teacher.backbone):
            object.__setattr__(self.teacher, "backbone", str(Path(self.teacher.backbone).expanduser().resolve()))
        e = self.export
        if e is not None and e.model not in MODEL_KEYWORDS and not e.model.startswith("transfer/"):
            object.__setattr__(e, "model", str(Path(e.model).expanduser().resolve()))
        if self.transfer is not None and self.transfer.student and looks_local(self.transfer.student):
            object.__setattr__(self.transfer, "student", str(Path(self.transfer.student).expanduser().resolve()))
        return self

    @model_validator(mode="after")
    def _export_model_exists(self) -> XdrayConfig:
        """``export.model`` names a step this config has: a typo must not export something else."""
        e = self.export
        if e is None:
            return self
        tasks = [t.name for t in self.transfer.tasks] if self.transfer else []
        source = self.data is not None
        if e.model in ("distill", "search", "teacher") and not source:
            raise ValueError(f"export.model: {e.model} needs the data and teacher sections; fix: add them or "
                             "export a transfer task (transfer/<task>) or a directory")
        if e.model.startswith("transfer/") and e.model.removeprefix("transfer/") not in tasks:
            raise ValueError(f"export.model: {e.model}: no such transfer task (tasks: {', '.join(tasks) or 'none'}); "
                             "fix: name one of them")
        if e.model == "auto" and not source and not tasks:
            raise ValueError("export.model: auto needs a source task or a transfer task; fix: set export.model")
        if e.data is not None and e.data != "source" and e.data not in tasks:
            raise ValueError(f"export.data: {e.data!r} is neither 'source' nor a transfer task "
                             f"({', '.join(tasks) or 'none'}); fix: name one of them")
        if e.data == "source" and not source:
            raise ValueError("export.data: source needs the data section; fix: add it or name a transfer task")
        return self

    @model_validator(mode="after")
    def _search_trials_can_run(self) -> XdrayConfig:
        """Trials train with the distill settings on ``workers_per_trial`` workers: check that too, up front."""
        if self.data is None:
            return self
        try:
            self.search_trainer()
        except ValidationError as e:
            raise ValueError(f"search.workers_per_trial={self.search.workers_per_trial}: "
                             f"{one_line(e).removeprefix('deepspeed.')}") from None
        from xdray.config.space import every_candidate  # the space's students, checked as distill.student is

        try:
            every_candidate(self)
        except ValidationError as e:
            raise ValueError(f"search.space with distill.student gives an invalid student: {one_line(e)}") from None
        return self

    @model_validator(mode="after")
    def _study_sources_are_configs(self) -> XdrayConfig:
        """Each source's whole config is valid, up front: a typo in the third source fails before the first runs."""
        if self.study is None:
            return self
        if self.data is None or self.transfer is None or not self.transfer.tasks:
            raise ValueError("study: needs data (the shared transfer corpora) and transfer.tasks (the targets every "
                             "student is measured on); fix: add them")
        for key, value in (("label.teacher", self.label.teacher), ("distill.labels", self.distill.labels),
                           ("transfer.student", self.transfer.student)):
            if value is not None:
                raise ValueError(f"study: {key} names one model or labelled set for every source; fix: remove it "
                                 "(each source trains its own teacher, labels and student)")
        if self.study.transfer_pairs and not any(keys.get("pairs") for keys in self.study.sources.values()):
            raise ValueError("study.transfer_pairs: no source sets pairs: true, so none would read it; fix: set "
                             "pairs: true on the sentence-pair source, or remove transfer_pairs")
        for name in self.study.sources:
            try:
                self.source_config(name)
            except (ValidationError, ConfigError) as e:
                raise ValueError(f"study.sources.{name}: "
                                 f"{one_line(e) if isinstance(e, ValidationError) else e}") from None
        return self

    def source_config(self, name: str) -> XdrayConfig:
        """A study source's own config: this one with ``data`` updated by the source's keys (and a pair source's
        corpus by ``study.transfer_pairs``), in ``<output_dir>/sources/<name>``, tracked in this config's MLflow
        store; its targets leave out the task whose train split is the source's own."""
        raw = self.model_dump(mode="json", exclude={"study"})
        raw["data"] |= self.study.sources[name]
        if raw["data"].get("pairs") and self.study.transfer_pairs:
            raw["data"]["transfer"] = [s.model_dump(mode="json") for s in self.study.transfer_pairs]
        raw["output_dir"] = str(self.output_dir / "sources" / name)
        raw["mlflow"]["tracking_uri"] = self.mlflow_uri
        train = Path(raw["data"]["train"]).resolve()
        raw["transfer"]["tasks"] = [t for t in raw["transfer"]["tasks"]
                                    if t.get("train") is None or Path(t["train"]).resolve() != train]
        return XdrayConfig.model_validate(raw)

    def search_trainer(self) -> DistillConfig:
        return DistillConfig.model_validate({**self.distill.model_dump(), "workers": self.search.workers_per_trial})

    def search_schedules(self) -> dict[str, list[StageConfig]]:
        """The schedules a search trial may run: ``search.space.schedules``, else distill's own."""
        return self.search.space.schedules or {"distill": self.distill.stages}

    @property
    def uses_hidden(self) -> bool:
        """Whether any distillation (distill or a search schedule) trains with the hidden loss."""
        stages = [s for stages in self.search_schedules().values() for s in stages] + list(self.distill.stages)
        return any("hidden" in s.loss for s in stages)

    @property
    def mlflow_uri(self) -> str:
        """``mlflow.tracking_uri``, else MLflow's own MLFLOW_TRACKING_URI, else ``local_store``."""
        return self.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or self.local_store

    @property
    def local_store(self) -> str:
        """The MLflow store without a tracking URI: SQLite in the output directory."""
        return f"sqlite:///{self.output_dir / 'mlflow.db'}"

    def step_dir(self, step: str) -> Path:
        return self.output_dir / step

    @property
    def teacher_dir(self) -> Path:
        return self.label.teacher or self.step_dir("teacher") / "model"

    @property
    def labels_dir(self) -> Path:
        return self.distill.labels or self.step_dir("label") / "data"

    @property
    def export_keyword(self) -> str:
        """``export.model`` with ``auto`` resolved: a step keyword, ``transfer/<task>``, or a directory."""
        e = self.export
        if e.model != "auto":
            return e.model
        return "distill" if self.data is not None else f"transfer/{self.transfer.tasks[0].name}"

    @property
    def export_model(self) -> tuple[Path, str]:
        """The directory ``export.model`` names, and whose splits check it: ``source`` or a transfer task."""
        e, model = self.export, self.export_keyword
        if model.startswith("transfer/"):
            path, data = self.step_dir("transfer") / model.removeprefix("transfer/") / "model", model.removeprefix("transfer/")
        else:
            path = {"distill": self.step_dir("distill") / "student", "search": self.step_dir("search") / "best_student",
                    "teacher": self.teacher_dir}.get(model, Path(model))
            data = "source" if self.data is not None else self.transfer.tasks[0].name
        return path, e.data or data

    def source_task(self) -> TransferTask:
        """The source task of a ``data.task`` other than classification, read as a transfer task would be."""
        d = self.data
        return TransferTask(name="source", type=d.task, train=d.train, dev=d.dev, test=d.test, tests=d.tests,
                            max_length=d.max_length, max_train_rows=d.max_train_rows, stride=d.stride)

    @property
    def transfer_student(self) -> str:
        return (self.transfer.student if self.transfer else None) or str(self.step_dir("distill") / "student")


# Loading and overrides


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> XdrayConfig:
    """Read YAML, apply ``a.b=c`` overrides (values parsed as YAML), validate into an ``XdrayConfig``."""
    return validate_config(load_raw(path, overrides))


def load_raw(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML mapping with overrides applied, paths untouched (``xdray submit`` ships it as it is)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; fix: pass the path of a YAML file such as jobs/quickstart.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}; fix: correct the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections; fix: see jobs/quickstart.yaml")
    for item in overrides:
        _apply_override(raw, item)
    return raw


def validate_config(raw: dict[str, Any]) -> XdrayConfig:
    try:
        return XdrayConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line(e)) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", key):
        raise ConfigError(f"bad override '{item}'; fix: write --set section.key=value (e.g. distill.workers=1)")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"bad override '{item}': {part} is not a section; fix: check the key path")
        node = node.setdefault(part, {})
    parsed = yaml.safe_load(value) if value else None
    if isinstance(node, list) and leaf.isdigit() and int(leaf) < len(node):
        node[int(leaf)] = parsed
    elif isinstance(node, dict):
        node[leaf] = parsed
    else:
        raise ConfigError(f"bad override '{item}': cannot set {leaf} there; fix: check the key path")
