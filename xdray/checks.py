"""The checks every step command runs before Ray starts: each input a step needs exists (upstream steps run in
the same command excused). Light on purpose: a bad path is reported in a second, before torch, Ray or MLflow load.
"""

from __future__ import annotations

import json
from pathlib import Path

from xdray.config import ConfigError, XdrayConfig, looks_local

STEPS = ("teacher", "label", "distill", "search")


def pipeline_steps(cfg: XdrayConfig) -> tuple[str, ...]:
    """What ``xdray pipeline`` runs: the distillation steps when the config has a source task, then transfer
    when it has target tasks, then export when it has an export section."""
    return ((STEPS if cfg.data is not None else ()) + (("transfer",) if cfg.transfer is not None else ())
            + (("export",) if cfg.export is not None else ()))


def check_inputs(cfg: XdrayConfig, steps: tuple[str, ...]) -> None:
    """Fail before any Ray work when an input of ``steps`` is missing (upstream steps in ``steps`` excused)."""
    if steps == ("study",):
        if cfg.study is None:
            raise ConfigError("study: required for xdray study; fix: add study.sources (see docs/steps/study.md)")
        for name in cfg.study.sources:
            try:
                check_inputs(cfg.source_config(name), ("teacher", "label", "distill", "transfer"))
            except ConfigError as e:
                raise ConfigError(f"study.sources.{name}: {e}") from None
        return
    if "export" in steps:
        _check_export(cfg, steps)
    if "transfer" in steps:
        _check_transfer(cfg, "distill" in steps)
    if set(steps) <= {"transfer", "export"}:
        return
    for key in ("data", "teacher"):
        if getattr(cfg, key) is None:
            raise ConfigError(f"{key}: required for xdray {' '.join(steps)}; fix: add the {key} section "
                              "(see jobs/quickstart.yaml)")
    if cfg.data.task != "classification" and "search" in steps:
        raise ConfigError(f"data.task {cfg.data.task}: xdray search (and the pipeline, which ends with it) ranks "
                          "students by accuracy and takes sequence tasks only; fix: run xdray teacher, xdray label "
                          "and xdray distill for this task")
    need_labeled = {"teacher", "distill", "search"} & set(steps)
    if need_labeled:
        for key in ("train", "dev", "test"):
            _must_exist(getattr(cfg.data, key), f"data.{key}")
        for name, path in cfg.data.tests.items():
            _must_exist(path, f"data.tests.{name}")
    if "teacher" in steps:
        backbone = cfg.teacher.backbone
        if looks_local(backbone) and not Path(backbone).exists():
            raise ConfigError(
                f"teacher.backbone: directory not found: {backbone}; fix: run `xdray data samples` or give a "
                "local HF model directory or hub id"
            )
    if "label" in steps:
        for i, source in enumerate(cfg.data.transfer):
            if source.path is not None:
                _must_exist(source.path, f"data.transfer[{i}]")
    if ({"label", "distill", "search"} & set(steps)) and "teacher" not in steps:
        _must_exist(cfg.teacher_dir / "config.json", "label.teacher", "run `xdray teacher` first or set label.teacher")
    transfer = {"distill": any(s.data == "transfer" for s in cfg.distill.stages),
                "search": any(s.data == "transfer" for stages in cfg.search_schedules().values() for s in stages)}
    if any(transfer.get(step) for step in steps) and "label" not in steps:  # stages that read the labelled Parquet
        _must_exist(cfg.labels_dir / "_manifest.json", "distill.labels", "run `xdray label` first or set distill.labels")


def _check_transfer(cfg: XdrayConfig, distilled_here: bool) -> None:
    if cfg.transfer is None:
        raise ConfigError("transfer: required for xdray transfer; fix: add a transfer section with tasks "
                          "(see jobs/transfer_quickstart.yaml)")
    student = cfg.transfer_student
    if not distilled_here and looks_local(student) and not Path(student, "config.json").exists():
        fix = "run `xdray distill` first" if cfg.transfer.student is None else "give a local HF model directory or hub id"
        raise ConfigError(f"transfer.student: not found: {student}; fix: {fix}")
    from xdray.transfer.tasks import load_task

    for i, task in enumerate(cfg.transfer.tasks):
        paths = {key: getattr(task, key) for key in ("train", "dev", "test")} | {
            f"tests.{name}": path for name, path in task.tests.items()}
        for key, path in paths.items():
            if path is not None:
                _must_exist(path, f"transfer.tasks.{i}.{key}", "run `xdray data transfer-sets` or correct the path")
        if task.preset is None:  # every label problem, before Ray or MLflow start (presets load in the step)
            load_task(task, cfg.seed)


def _check_export(cfg: XdrayConfig, steps: tuple[str, ...]) -> None:
    if cfg.export is None:
        raise ConfigError("export: required for xdray export; fix: add an export section (e.g. export: {model: "
                          "distill}; see docs/config.md)")
    if cfg.export_keyword.split("/")[0] not in steps:  # not made by a step of this command: it must exist now
        path, _ = cfg.export_model
        _must_exist(path / "config.json", "export.model", "run the step that writes it first, or point export.model "
                    "at a saved HF model directory")
        try:
            json.loads((path / "config.json").read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigError(f"export.model: {path / 'config.json'} is not valid JSON; fix: re-run the step that "
                              "wrote the model, or point export.model at a complete HF model directory") from None
    if cfg.export.data not in (None, "source") or cfg.data is None:
        return
    for key in ("dev", "test"):
        _must_exist(getattr(cfg.data, key), f"data.{key}")


def _must_exist(path: Path, key: str, fix: str = "run `xdray data samples` or correct the path") -> None:
    if not path.exists():
        raise ConfigError(f"{key}: not found: {path}; fix: {fix}")
