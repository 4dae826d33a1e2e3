"""``transfer``: the target tasks a distilled student (or any HF encoder) is fine-tuned on."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from xdray.config.base import Section, unique_names
from xdray.config.data import check_test_names
from xdray.config.trainer import TrainerConfig

TASK_TYPES = ("classification", "pair_classification", "token_classification", "regression", "question_answering")
GLUE_PRESETS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
QA_PRESETS = ("squad", "squad_v2")
TASK_FORMATS = ("auto", "tsv", "csv", "jsonl", "parquet", "hf_disk", "conll")


class TransferTask(Section):
    """One target task: labeled train/dev/test splits (files, ``save_to_disk`` directories, or a GLUE preset)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Names the task's output directory and MLflow run."""
    type: Literal["classification", "pair_classification", "token_classification", "regression",
                  "question_answering"] | None = None
    """Required unless a preset gives it."""
    preset: str | None = None
    """``glue/<task>``, ``squad`` or ``squad_v2`` (need network): the train split minus a seeded dev holdout, the
    validation split as test."""
    train: Path | None = None
    """Train split: a file (TSV/CSV, JSON lines, Parquet, CoNLL) or a `save_to_disk` directory."""
    dev: Path | None = None
    """Dev split (early stopping on the task's metric)."""
    test: Path | None = None
    """Test split, scored once on the exported model."""
    tests: dict[str, Path] = {}
    """More test splits, by language (or any name), each scored like ``test`` and reported as
    ``test_<metric>.<name>``: the results table gets one column per name. Not with a preset."""
    format: Literal["auto", "tsv", "csv", "jsonl", "parquet", "hf_disk", "conll"] = "auto"
    """``auto``: from the suffix (.tsv .csv .jsonl/.json .parquet .conll/.bio) or a ``save_to_disk`` directory."""
    text_column: str = "text"
    """Sequence tasks: the text column."""
    pair_column: str = "text_pair"
    """Pair tasks: the second sentence's column."""
    label_column: str = "label"
    """Sequence tasks: the label column (class names, integer ids, or floats for regression)."""
    tokens_column: str = "tokens"
    """Token tasks: a list of words (or one space-separated string)."""
    tags_column: str = "tags"
    """Token tasks: one tag per word (BIO names like ``B-PER``, or ids into ``labels``)."""
    question_column: str = "question"
    """Question answering: the question's column."""
    context_column: str = "context"
    """Question answering: the passage's column."""
    answers_column: str = "answers"
    """Question answering: SQuAD's ``{"text": [...], "answer_start": [...]}`` (character offsets into the context);
    no answer texts = unanswerable (SQuAD v2: the model may then answer nothing)."""
    stride: int = Field(32, ge=0)
    """Question answering: context tokens shared by consecutive windows when a context does not fit in
    ``max_length``."""
    labels: list[str] | None = None
    """Class (or tag) names in id order; None = the names found in train (sorted), or 0..N-1 for integer labels."""
    splits: dict[str, str] = {"train": "train", "dev": "validation", "test": "test"}
    """``save_to_disk`` DatasetDict directories: which stored split each role reads."""
    max_train_rows: int | None = Field(None, ge=1)
    """Subsample train (fixed seed) to bound run time."""
    max_length: int = Field(128, ge=8, le=4096)
    """Tokens per input."""

    @model_validator(mode="after")
    def _complete(self) -> TransferTask:
        where = f"task '{self.name}'"
        check_test_names(self.tests, f"{where}: tests")
        if self.preset is not None:
            family, _, name = self.preset.partition("/")
            if (family != "glue" or name not in GLUE_PRESETS) and self.preset not in QA_PRESETS:
                raise ValueError(f"{where}: preset {self.preset!r} is not known; fix: use glue/<one of "
                                 f"{', '.join(GLUE_PRESETS)}>, {' or '.join(QA_PRESETS)}, or give train/dev/test "
                                 "paths")
            if any(p is not None for p in (self.train, self.dev, self.test)) or self.tests:
                raise ValueError(f"{where}: give a preset or train/dev/test paths, not both; fix: remove one")
            return self
        missing = [k for k in ("train", "dev", "test") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"{where}: {', '.join(missing)} missing; fix: give train, dev and test paths (or a preset)")
        if self.type is None:
            raise ValueError(f"{where}: type missing; fix: set type to one of {', '.join(TASK_TYPES)}")
        if self.format == "conll" and self.type != "token_classification":
            raise ValueError(f"{where}: format conll holds token tags; fix: set type: token_classification")
        if self.type == "question_answering" and self.stride >= self.max_length // 2:
            raise ValueError(f"{where}: stride {self.stride} must be under half of max_length {self.max_length} (the "
                             "question shares each window); fix: lower stride or raise max_length")
        if self.type == "regression" and self.labels is not None:
            raise ValueError(f"{where}: a regression task has no class names; fix: remove labels")
        return self


class TransferConfig(TrainerConfig):
    """``xdray transfer``: fine-tune a student (or any HF encoder) on each task, early-stopping on dev."""

    student: str | None = None
    """A local HF directory or hub id; None = the distilled student, <output_dir>/distill/student."""
    tasks: list[TransferTask] = Field(min_length=1)
    epochs: int = Field(3, ge=1)
    """Most epochs per task; the best dev epoch is kept."""
    patience: int | None = Field(2, ge=1)
    """Stop after this many epochs without a better dev score; the best epoch's weights are kept."""
    lr: float = Field(1e-4, gt=0)
    """Learning rate (per task)."""
    trust_remote_code: bool = False
    """Only if you trust the model's code."""
    latency_sentences: int = Field(64, ge=1)
    """Test sentences timed for the CPU latency in the summary (batch 1, 1 thread)."""

    @field_validator("tasks")
    @classmethod
    def _unique_task_names(cls, tasks: list[TransferTask]) -> list[TransferTask]:
        return unique_names(tasks, "task")
