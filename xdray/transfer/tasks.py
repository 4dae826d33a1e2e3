"""Target tasks for ``xdray transfer``: labeled splits read from TSV/CSV/JSON lines/Parquet/CoNLL files,
``save_to_disk`` directories or GLUE / SQuAD presets, turned into canonical rows with integer (or float) labels.

Canonical rows: ``{"text", "label"}`` (+ ``"text_pair"`` for sentence pairs, and for regression when the
data has a second sentence), ``{"tokens", "tags"}`` for token tasks, or ``{"question", "context", "answers",
"answer_starts"}`` (answer texts and their character offsets; none: unanswerable) for question answering. Every label problem (an unknown class
name, a fractional label for a classification task, a tag count that does not match the words) stops the run
with one line naming the file, the row and the fix, before any worker starts.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from xdray.config import TransferTask
from xdray.errors import XdrayError

ROLES = ("train", "dev", "test")
_SUFFIXES = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
             ".parquet": "parquet", ".conll": "conll", ".bio": "conll"}
# GLUE task → (type, first column, second column); GLUE hides test labels, so its validation split is the test
GLUE = {
    "cola": ("classification", "sentence", None), "sst2": ("classification", "sentence", None),
    "mrpc": ("pair_classification", "sentence1", "sentence2"), "qqp": ("pair_classification", "question1", "question2"),
    "stsb": ("regression", "sentence1", "sentence2"), "mnli": ("pair_classification", "premise", "hypothesis"),
    "qnli": ("pair_classification", "question", "sentence"), "rte": ("pair_classification", "sentence1", "sentence2"),
    "wnli": ("pair_classification", "sentence1", "sentence2"),
}
GLUE_DEV_ROWS = 2000
SQUAD = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}

Record = tuple[str, dict]  # (where it came from, for error messages; the raw row)


@dataclass
class TaskData:
    type: str
    train: list[dict]
    dev: list[dict]
    test: list[dict]
    names: list[str] | None
    """Class or tag names in id order; None for regression."""
    tests: dict[str, list[dict]] = field(default_factory=dict)
    """More test splits by name (``tests`` in the config): ``split("test.<name>")``."""

    def split(self, name: str) -> list[dict]:
        """Rows of ``train``, ``dev``, ``test`` or ``test.<name>``."""
        return self.tests[name.removeprefix("test.")] if name.startswith("test.") else getattr(self, name)

    @property
    def num_labels(self) -> int:
        """Classes or tags; 1 for regression; 2 for question answering (a start and an end score per token)."""
        return 2 if self.type == "question_answering" else len(self.names) if self.names else 1

    @property
    def pairs(self) -> bool:
        return any("text_pair" in row for row in self.train[:1])

    stride: int = 0
    """Question answering: context tokens shared by consecutive windows."""

    @property
    def allow_null(self) -> bool:
        """Question answering with unanswerable questions (SQuAD v2): the empty answer is a prediction."""
        return any(not row["answers"] for rows in (self.train, self.dev) for row in rows)

    def worker_spec(self) -> dict:
        """What a Ray Train worker needs to build the model, batches and dev metric (plain data)."""
        spec = {"type": self.type, "names": self.names, "num_labels": self.num_labels}
        if self.type == "question_answering":
            spec |= {"stride": self.stride, "allow_null": self.allow_null}
        return spec


def load_task(task: TransferTask, seed: int = 0) -> TaskData:
    kind, raw, hf_names = _preset(task, seed) if task.preset else _files(task)
    if kind == "question_answering":
        names = None
        splits = {role: [_qa_row(where, r, task) for where, r in records] for role, records in raw.items()}
    elif kind == "token_classification":
        names = _names(task, hf_names, (pair for where, r in raw["train"] for pair in _tag_list(r, task, where)))
        splits = {role: [_token_row(where, r, task, names) for where, r in records] for role, records in raw.items()}
    elif kind == "regression":
        names = None
        splits = {role: [_text_row(where, r, task, _float_label(where, r, task)) for where, r in records]
                  for role, records in raw.items()}
    else:
        names = _names(task, hf_names, ((where, _field(where, r, task.label_column)) for where, r in raw["train"]),
                       kind)
        splits = {role: [_text_row(where, r, task, _class_id(where, _field(where, r, task.label_column), names, task))
                         for where, r in records] for role, records in raw.items()}
    for role, rows in splits.items():
        if not rows:
            raise XdrayError(f"task '{task.name}': the {role} split has no rows; fix: point tasks[].{role} at a "
                             "non-empty split")
    train = splits["train"]
    if task.max_train_rows and task.max_train_rows < len(train):
        keep = sorted(random.Random(seed).sample(range(len(train)), task.max_train_rows))
        train = [train[i] for i in keep]
    tests = {name: splits[f"test.{name}"] for name in task.tests}
    return TaskData(kind, train, splits["dev"], splits["test"], names, tests, task.stride)


# ---------------------------------------------------------------------------------------------------------
# Rows and labels


def _field(where: str, record: dict, column: str):
    if column not in record:
        raise XdrayError(f"{where}: no column {column!r} (found {sorted(record)}); fix: set the task's "
                         f"*_column keys to the data's column names")
    return record[column]


def _text_row(where: str, record: dict, task: TransferTask, label) -> dict:
    row = {"text": str(_field(where, record, task.text_column) or ""), "label": label}
    if task.pair_column in record or task.type == "pair_classification":
        row["text_pair"] = str(_field(where, record, task.pair_column) or "")
    return row


def _fraction(value) -> float | None:
    """The value as a number with a fractional part, if it is one (a float class label is a mistake)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and not number.is_integer() else None


def _as_int(value) -> int | None:
    """An integer class id (``3``, ``3.0``, ``"3"``), or None for anything else (a class name)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _refuse_fraction(where: str, value, task: TransferTask) -> None:
    if _fraction(value) is not None:
        raise XdrayError(f"{where}: label {value!r} is a fractional number, but task '{task.name}' is "
                         f"{task.type or 'a classification'}; fix: use type: regression for float targets, or "
                         "class names / integer ids")


def _names(task: TransferTask, hf_names: list[str] | None, labelled, kind: str = "token_classification") -> list[str]:
    """Class names in id order: the config's, the dataset's ClassLabel names, else from the train labels
    (0..max for integer ids, the sorted names otherwise)."""
    values = []
    for where, value in labelled:
        _refuse_fraction(where, value, task)
        values.append(value)
    if task.labels:
        return list(task.labels)
    if hf_names:
        return list(hf_names)
    ints = [_as_int(v) for v in values]
    if values and all(i is not None and i >= 0 for i in ints):
        return [str(i) for i in range(max(ints) + 1)]
    return sorted({str(v) for v in values})


def _class_id(where: str, value, names: list[str], task: TransferTask) -> int:
    _refuse_fraction(where, value, task)
    if str(value) in names:
        return names.index(str(value))
    number = _as_int(value)
    if number is not None and 0 <= number < len(names):
        return number
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise XdrayError(f"{where}: label {value!r} is not one of task '{task.name}''s classes [{shown}]; fix: "
                     f"correct the data, or list every class in tasks[].labels")


def _float_label(where: str, record: dict, task: TransferTask) -> float:
    value = _field(where, record, task.label_column)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number):
        raise XdrayError(f"{where}: label {value!r} is not a number, but task '{task.name}' is a regression; "
                         "fix: correct the data, or use a classification type for class names")
    return number


def _tag_list(record: dict, task: TransferTask, where: str) -> list[tuple[str, object]]:
    tags = _field(where, record, task.tags_column)
    return [(where, t) for t in (tags.split() if isinstance(tags, str) else list(tags))]


def _qa_row(where: str, record: dict, task: TransferTask) -> dict:
    question, context = (str(_field(where, record, c) or "") for c in (task.question_column, task.context_column))
    answers = _field(where, record, task.answers_column)
    if not isinstance(answers, dict) or not {"text", "answer_start"} <= set(answers):
        raise XdrayError(f"{where}: {task.answers_column!r} is not SQuAD's {{'text': [...], 'answer_start': [...]}}; "
                         "fix: give each row its answer texts and their character offsets in the context")
    texts, starts = [str(t) for t in answers["text"]], [int(a) for a in answers["answer_start"]]
    for text, start in zip(texts, starts):
        if len(texts) != len(starts) or context[start:start + len(text)] != text:
            raise XdrayError(f"{where}: answer {text!r} is not at character {start} of the context; fix: correct "
                             "answer_start (a character offset into the context)")
    return {"question": question, "context": context, "answers": texts, "answer_starts": starts}


def _token_row(where: str, record: dict, task: TransferTask, names: list[str]) -> dict:
    words = _field(where, record, task.tokens_column)
    words = words.split() if isinstance(words, str) else [str(w) for w in words]
    tags = [_class_id(w, t, names, task) for w, t in _tag_list(record, task, where)]
    if len(tags) != len(words):
        raise XdrayError(f"{where}: {len(words)} words but {len(tags)} tags; fix: give one tag per word")
    return {"tokens": words, "tags": tags}


# ---------------------------------------------------------------------------------------------------------
# Readers


def task_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf_disk"
    return _SUFFIXES.get(path.suffix.lower(), "tsv")


def _files(task: TransferTask) -> tuple[str, dict[str, list[Record]], list[str] | None]:
    raw, hf_names = {}, None
    paths = {role: getattr(task, role) for role in ROLES} | {f"test.{n}": p for n, p in task.tests.items()}
    for role, path in paths.items():
        if not path.exists():
            raise XdrayError(f"task '{task.name}': {role} not found: {path}; fix: correct tasks[].{role}")
        fmt = task_format(path, task.format)
        if fmt == "hf_disk":
            raw[role], names = _hf_disk(path, task, role)
            hf_names = hf_names or names
        else:
            raw[role] = list(_read_file(path, fmt))
    return task.type, raw, hf_names


def _read_file(path: Path, fmt: str) -> Iterator[Record]:
    if fmt in ("tsv", "csv"):
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            for lineno, row in enumerate(csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ","), start=2):
                yield f"{path}:{lineno}", row
    elif fmt == "jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield f"{path}:{lineno}", json.loads(line)
                    except json.JSONDecodeError:
                        raise XdrayError(f"{path}:{lineno}: not valid JSON; fix: one JSON object per line") from None
    elif fmt == "parquet":
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path} row {i}", row
    else:  # conll: "word ... TAG" lines, a blank line between sentences
        words, tags, start = [], [], 1
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(list(f) + [""], start=1):
                parts = line.split()
                if parts and not parts[0].startswith("-DOCSTART-"):
                    words.append(parts[0])
                    tags.append(parts[-1])
                elif words:
                    yield f"{path}:{start}", {"tokens": words, "tags": tags}
                    words, tags = [], []
                if not words:
                    start = lineno + 1


def _hf_disk(path: Path, task: TransferTask, role: str) -> tuple[list[Record], list[str] | None]:
    import datasets

    stored = datasets.load_from_disk(str(path))
    if isinstance(stored, datasets.DatasetDict):
        split = task.splits.get(role, role)
        if split not in stored:
            raise XdrayError(f"{path}: no split {split!r} (has {list(stored)}); fix: set tasks[].splits.{role}")
        stored = stored[split]
    return [(f"{path}[{role}] row {i}", row) for i, row in enumerate(stored)], _classlabel_names(stored, task)


def _classlabel_names(ds, task: TransferTask) -> list[str] | None:
    column = task.tags_column if task.type == "token_classification" else task.label_column
    feature = ds.features.get(column)
    feature = getattr(feature, "feature", feature)  # a Sequence of ClassLabel for tags
    return list(feature.names) if hasattr(feature, "names") else None


def _preset(task: TransferTask, seed: int) -> tuple[str, dict[str, list[Record]], list[str] | None]:
    """A GLUE task or SQuAD from the Hub: train minus a seeded dev holdout, validation as test."""
    import datasets

    if task.preset in SQUAD:
        kind, hub, name = "question_answering", SQUAD[task.preset], None
    else:
        name, hub = task.preset.split("/", 1)[1], "nyu-mll/glue"
        kind, first, second = GLUE[name]
        object.__setattr__(task, "text_column", first)
        object.__setattr__(task, "pair_column", second or "text_pair")
    object.__setattr__(task, "type", kind)
    try:
        stored = datasets.load_dataset(hub, name)
    except Exception as e:  # offline, or the Hub refused: one line, not a traceback
        raise XdrayError(f"task '{task.name}': preset {task.preset} could not be loaded ({type(e).__name__}); fix: "
                         "it needs network access to the Hugging Face Hub; offline, save it with save_to_disk and "
                         "give its directory as train/dev/test with format: hf_disk") from None
    train = [(f"{task.preset}[train] row {i}", r) for i, r in enumerate(stored["train"])]
    order = random.Random(seed).sample(range(len(train)), len(train))
    held = set(order[:min(GLUE_DEV_ROWS, len(train) // 10)])
    test = stored["validation_matched" if name == "mnli" else "validation"]
    raw = {"train": [r for i, r in enumerate(train) if i not in held], "dev": [train[i] for i in sorted(held)],
           "test": [(f"{task.preset}[validation] row {i}", r) for i, r in enumerate(test)]}
    return kind, raw, _classlabel_names(stored["train"], task)
