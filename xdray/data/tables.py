"""Reading and writing labeled splits: TSV files with a header and columns ``text`` and ``label`` (integer
class ids), plus ``text_pair`` for sentence-pair tasks. Transfer corpora are read by ``xdray.label.corpus``.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from xdray.common.files import atomic_path
from xdray.config import XdrayConfig
from xdray.errors import XdrayError


@dataclass(frozen=True)
class LabeledSplit:
    texts: list[str]
    labels: list[int]
    pairs: list[str] | None = None
    """Second sentences of sentence-pair tasks (the ``text_pair`` column)."""

    def __len__(self) -> int:
        return len(self.texts)

    def subsample(self, n: int | None, seed: int) -> LabeledSplit:
        if n is None or n >= len(self):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        pairs = [self.pairs[i] for i in idx] if self.pairs is not None else None
        return LabeledSplit([self.texts[i] for i in idx], [self.labels[i] for i in idx], pairs)

    def rows(self) -> list[dict]:
        rows = [{"text": t, "label": y} for t, y in zip(self.texts, self.labels)]
        if self.pairs is not None:
            for row, pair in zip(rows, self.pairs):
                row["text_pair"] = pair
        return rows


def read_labeled(path: Path) -> LabeledSplit:
    texts, labels, pairs = [], [], []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
            raise XdrayError(f"{path}: needs a header with columns 'text' and 'label'; fix: add the header row")
        for lineno, row in enumerate(reader, start=2):
            try:
                labels.append(int(row["label"]))
            except (TypeError, ValueError):
                raise XdrayError(
                    f"{path}:{lineno}: label {row['label']!r} is not an integer class id; fix: use 0..N-1"
                ) from None
            texts.append(row["text"] or "")
            pairs.append(row.get("text_pair") or "")
    if not texts:
        raise XdrayError(f"{path}: no rows; fix: point the config at a non-empty split")
    return LabeledSplit(texts, labels, pairs if "text_pair" in reader.fieldnames else None)


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


def write_labeled(path: Path, split: LabeledSplit) -> None:
    fields = ["text", "label"] + (["text_pair"] if split.pairs is not None else [])
    write_atomic_tsv(path, fields, split.rows())


def write_atomic_tsv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def text_table(split: LabeledSplit) -> pa.Table:
    """A labeled split as text rows, sorted by length so dev batches carry little padding."""
    rows = sorted(split.rows(), key=lambda r: len(r["text"]) + len(r.get("text_pair", "")))
    return pa.Table.from_pylist(rows)
