"""``data``: the labeled source splits and the unlabeled transfer corpora the teacher labels."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from xdray.config.base import Section

CORPUS_FORMATS = ("text", "jsonl", "csv", "tsv", "parquet", "hf_disk")
_SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
             ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


class TransferSource(Section):
    """One unlabeled corpus. In YAML a bare path is short for ``{path: ...}``."""

    path: Path | None = None
    """A file, or a directory (of Parquet files, or saved with ``datasets``' ``save_to_disk``)."""
    hub: str | None = None
    """A Hugging Face Hub dataset name instead of a path (needs network; streamed, never fully downloaded)."""
    format: Literal["auto", "text", "jsonl", "csv", "tsv", "parquet", "hf_disk"] = "auto"
    """``auto``: from the suffix (.txt .jsonl/.json .csv .tsv .parquet) or the directory's contents."""
    text_column: str = "text"
    """Column (JSON key) holding the text; without a CSV/TSV header a 0-based index (`"0"`)."""
    pair_column: str = "text_pair"
    """Second sentence (``data.pairs``); text files hold ``text<TAB>text_pair`` lines instead."""
    header: bool = True
    """CSV/TSV: the first row names the columns; without one, columns are 0-based indices (``"0"``, ``"1"``)."""
    split: str = "train"
    """Hub datasets and ``DatasetDict`` directories: which split to read."""
    subset: str | None = None
    """Hub datasets: the configuration name."""
    name: str | None = None
    """Namespace of this source's row ids when ``data.cleaning.dedupe`` is off; default: the file name or hub name."""

    @model_validator(mode="after")
    def _one_origin(self) -> TransferSource:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of path and hub; fix: e.g. {path: corpus.txt} or {hub: imdb}")
        if self.hub is not None and self.format not in ("auto",):
            raise ValueError("format applies to paths only; fix: remove format for a hub dataset")
        return self

    @property
    def key(self) -> str:
        return self.name or (self.hub if self.hub is not None else self.path.name)

    @property
    def kind(self) -> str:
        """The reader to use: ``hub`` or one of ``CORPUS_FORMATS``."""
        if self.hub is not None:
            return "hub"
        if self.format != "auto":
            return self.format
        if self.path.is_dir():
            saved = any((self.path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))
            return "hf_disk" if saved else "parquet"
        return _SUFFIXES.get(self.path.suffix.lower(), "text")


class CleaningConfig(Section):
    """What the labelling job does to the transfer corpus before the teacher sees it. Always: strip whitespace,
    drop empty rows, replace undecodable bytes (U+FFFD); every kind is counted in the label summary."""

    dedupe: bool = True
    """Keep one row per exact text (across sources); the row id is then derived from the text alone."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """Rows longer than ``data.max_length`` tokens: truncated to it, or dropped."""


def bare_paths(value: Any) -> Any:
    """A list of transfer sources from YAML's short forms: one source, or bare paths."""
    if isinstance(value, (str, Path, dict)):
        value = [value]
    return [{"path": v} if isinstance(v, (str, Path)) else v for v in value] if isinstance(value, list) else value


TEST_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_test_names(value: dict[str, Path], where: str) -> dict[str, Path]:
    bad = [k for k in value if not TEST_NAME.match(k)]
    if bad:
        raise ValueError(f"{where}: {bad[0]!r} is not a split name; fix: use a language code such as de or zh-cn")
    return value


class DataConfig(Section):
    task: Literal["classification", "token_classification", "question_answering"] = "classification"
    """What the teacher is trained for. ``token_classification``: tags per word (NER); the splits are then CoNLL
    (``word<TAB>tag`` lines) or any file a ``token_classification`` transfer task reads (tokens, tags). Such a task
    is distilled into a token-classification student (per-token logits); ``xdray search`` takes sequence tasks only.
    ``question_answering``: SQuAD-shaped splits (``question``, ``context``, ``answers``), windows of ``max_length``
    overlapping by ``stride``, scored by exact match and F1; the transfer corpora then hold unlabelled (question,
    context) pairs (``text_column``/``pair_column``, or ``question<TAB>context`` lines) and the teacher's start and
    end logits of every window are distilled into a QA student."""
    train: Path
    """Labeled train split: a TSV file with a header and columns `text` and `label` (integer class ids; `text_pair` too
    with `pairs`)."""
    dev: Path
    """Labeled dev split (same format as train): model selection and early stopping."""
    test: Path
    """Labeled splits: TSV files with a header and columns ``text`` and ``label``."""
    tests: dict[str, Path] = {}
    """More test splits, by language (or any name): each scored like ``test`` by the teacher and distill steps and
    reported as ``test_accuracy.<name>`` (a zero-shot cross-lingual test: the same task in other languages)."""
    transfer: list[TransferSource] = Field(min_length=1)
    """Unlabeled transfer corpora, mixed in one run: paths (text, JSON lines, CSV/TSV, Parquet, ``save_to_disk``
    directories) or ``{hub: name}``."""
    pairs: bool = False
    """Sentence-pair inputs: labeled splits carry a ``text_pair`` column, and so do the transfer sources."""
    max_length: int = Field(64, ge=8, le=4096)
    """Tokens per input."""
    stride: int = Field(16, ge=0)
    """Question answering: context tokens shared by consecutive windows of a context longer than ``max_length``."""
    max_train_rows: int | None = Field(None, ge=1)
    """Subsample the labeled train split (fixed seed) to bound run time; None uses all rows."""
    max_transfer_rows: int | None = Field(None, ge=1)
    """Keep this many cleaned transfer rows, a fixed-seed sample by id (memory grows with it, not the corpus)."""
    cleaning: CleaningConfig = CleaningConfig()

    @property
    def paired(self) -> bool:
        """Whether the transfer corpora hold two texts a row: sentence pairs, or a QA task's question and context."""
        return self.pairs or self.task == "question_answering"

    @field_validator("transfer", mode="before")
    @classmethod
    def _bare_paths(cls, value: Any) -> Any:
        return bare_paths(value)

    @field_validator("tests")
    @classmethod
    def _test_names(cls, value: dict[str, Path]) -> dict[str, Path]:
        return check_test_names(value, "data.tests")

    @model_validator(mode="after")
    def _task_inputs_fit(self) -> DataConfig:
        if self.task == "token_classification" and self.pairs:
            raise ValueError("data.pairs: a token_classification task tags the words of one text; fix: remove pairs")
        if self.task == "question_answering" and self.pairs:
            raise ValueError("data.pairs: a question_answering task already pairs each question with its context; "
                             "fix: remove pairs")
        if self.task == "question_answering" and self.stride >= self.max_length // 2:
            raise ValueError(f"data.stride {self.stride} must be under half of max_length {self.max_length} (the "
                             "question shares each window); fix: lower stride or raise max_length")
        return self

    @model_validator(mode="after")
    def _unique_source_names(self) -> DataConfig:
        keys = [s.key for s in self.transfer]
        if len(keys) != len(set(keys)):
            raise ValueError(f"transfer sources share the name {sorted({k for k in keys if keys.count(k) > 1})}; "
                             "fix: give each a distinct name")
        return self
