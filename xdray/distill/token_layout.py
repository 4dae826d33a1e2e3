"""Per-token teacher outputs in the labelled Parquet, stored compactly, and read back as dense targets.

Token tasks (NER): for each kept token — the first sub-word of each word, or every real token — the teacher's
label logits, float16. With ``top_k`` only the k largest logits per token are stored, with their label ids and
the token's log-sum-exp over all labels, so the distribution over the k labels plus "the rest" stays exact
(``k >= labels`` stores everything and loses nothing). QA: the start and end logits of every token of each
window. Plain numpy/pyarrow/torch: the labelling actors write with it, the distillation workers read with it.

Columns (one list cell per row; ``n`` kept tokens, ``C`` labels):
  ``token_positions``  int16 × n, positions in the row's ``input_ids``;
  ``token_logits``     float16 × n·C, or n·k with ``top_k``;
  ``token_labels``     int16 × n·k, the label of each stored logit (``top_k`` only);
  ``token_lse``        float16 × n, log Σ exp over all C logits (``top_k`` only);
  ``start_logits``, ``end_logits``  float16 × T (QA).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from xdray.distill.losses import IGNORE_INDEX
from xdray.errors import XdrayError

KINDS = ("sequence", "tokens", "qa")


@dataclass(frozen=True)
class Layout:
    """What the labelled Parquet holds per row; recorded in the label manifest and checked by distill."""

    kind: Literal["sequence", "tokens", "qa"] = "sequence"
    positions: Literal["first_subword", "all"] = "first_subword"
    top_k: int | None = None
    num_labels: int = 0
    stride: int = 0
    """QA: context tokens shared by consecutive windows."""

    @property
    def lossless(self) -> bool:
        return self.kind != "tokens" or self.top_k is None or self.top_k >= self.num_labels

    @property
    def stored_k(self) -> int:
        return self.num_labels if self.lossless else self.top_k

    def describe(self) -> dict:
        """The manifest's ``layout`` (the stride only for QA, where it says how the windows were cut)."""
        entry = asdict(self) | {"lossless": self.lossless}
        if self.kind != "qa":
            del entry["stride"]
        return entry

    @classmethod
    def read(cls, entry: dict | None) -> Layout:
        """The layout a manifest recorded; manifests from before per-token outputs hold sequence logits."""
        if not entry:
            return cls()
        return cls(**{k: entry[k] for k in ("kind", "positions", "top_k", "num_labels", "stride") if k in entry})

    def check(self, task_kind: str, num_labels: int, where: str) -> None:
        """One line when labels of this layout cannot train a student for ``task_kind``."""
        if self.kind != task_kind:
            raise XdrayError(f"{where}: the labelled Parquet holds {self.kind} outputs, but the task is {task_kind}; "
                             f"fix: label again with the task's teacher (delete {where} or set label.teacher)")
        if self.kind == "tokens" and self.num_labels != num_labels:
            raise XdrayError(f"{where}: the labelled Parquet holds logits of {self.num_labels} token labels, the "
                             f"task has {num_labels}; fix: label again with the task's teacher")


def kept_positions(word_ids: list[int | None], positions: str) -> list[int]:
    """Token positions to store: the first sub-word of each word, or every token of a word (never specials)."""
    out, previous = [], None
    for i, word in enumerate(word_ids):
        if word is not None and (positions == "all" or word != previous):
            out.append(i)
        previous = word
    return out


def word_tags(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """Each word's tag on its first sub-word and ``IGNORE_INDEX`` elsewhere (later sub-words, specials,
    padding): what token classifiers train and are scored on."""
    out = [IGNORE_INDEX] * len(word_ids)
    for position in kept_positions(word_ids, "first_subword"):
        out[position] = int(tags[word_ids[position]])
    return out


def token_columns(logits: list[np.ndarray], positions: list[list[int]], layout: Layout) -> dict[str, pa.Array]:
    """The per-token columns of a chunk: ``logits[i]`` is row i's (T_i, C) float32 teacher logits."""
    kept = [np.asarray(x, np.float32)[p] for x, p in zip(logits, positions)]
    columns = {"token_positions": ragged([np.asarray(p, np.int16) for p in positions], pa.int16())}
    if layout.lossless:
        columns["token_logits"] = ragged([x.reshape(-1) for x in kept], pa.float16())
        return columns
    k = layout.top_k
    top = [np.argsort(-x, axis=-1, kind="stable")[:, :k] for x in kept]
    columns["token_logits"] = ragged([np.take_along_axis(x, t, -1).reshape(-1) for x, t in zip(kept, top)],
                                     pa.float16())
    columns["token_labels"] = ragged([t.astype(np.int16).reshape(-1) for t in top], pa.int16())
    columns["token_lse"] = ragged([_logsumexp(x) for x in kept], pa.float16())
    return columns


def span_columns(start: list[np.ndarray], end: list[np.ndarray]) -> dict[str, pa.Array]:
    """QA: each window's start and end logits over its tokens."""
    return {"start_logits": ragged(start, pa.float16()), "end_logits": ragged(end, pa.float16())}


def token_targets(raw: dict[str, np.ndarray], length: int, layout: Layout) -> dict[str, torch.Tensor]:
    """Dense (B, T, C) targets from a numpy batch of the columns: ``teacher_token_logits`` (0 where nothing is
    stored), ``teacher_token_mask`` (True where a logit is stored) and, with ``top_k``, ``teacher_token_lse``
    (B, T). Positions at or past ``length`` (rows cut by the student's ``max_length``) are dropped."""
    b, c = len(raw["token_positions"]), layout.num_labels
    logits = torch.zeros(b, length, c)
    mask = torch.zeros(b, length, c, dtype=torch.bool)
    lse = torch.zeros(b, length)
    k = layout.stored_k
    for i, pos in enumerate(raw["token_positions"]):
        pos = torch.as_tensor(np.asarray(pos, np.int64))
        inside = pos < length
        values = torch.as_tensor(np.asarray(raw["token_logits"][i], np.float32)).view(len(pos), k)[inside]
        rows = pos[inside]
        if layout.lossless:
            logits[i, rows] = values
            mask[i, rows] = True
        else:
            labels = torch.as_tensor(np.asarray(raw["token_labels"][i], np.int64)).view(len(pos), k)[inside]
            logits[i, rows[:, None], labels] = values
            mask[i, rows[:, None], labels] = True
            lse[i, rows] = torch.as_tensor(np.asarray(raw["token_lse"][i], np.float32))[inside]
    out = {"teacher_token_logits": logits, "teacher_token_mask": mask}
    if not layout.lossless:
        out["teacher_token_lse"] = lse
    return out


def span_targets(raw: dict[str, np.ndarray], length: int) -> dict[str, torch.Tensor]:
    """(B, T) start and end targets padded with 0, and the mask of stored positions."""
    b = len(raw["start_logits"])
    out = {name: torch.zeros(b, length) for name in ("teacher_start_logits", "teacher_end_logits")}
    mask = torch.zeros(b, length, dtype=torch.bool)
    for i in range(b):
        n = min(len(raw["start_logits"][i]), length)
        for name, column in (("teacher_start_logits", "start_logits"), ("teacher_end_logits", "end_logits")):
            out[name][i, :n] = torch.as_tensor(np.asarray(raw[column][i][:n], np.float32))
        mask[i, :n] = True
    return out | {"teacher_span_mask": mask}


def bytes_per_token(table: pa.Table, layout: Layout) -> float:
    """In-memory size of the teacher-output columns (Arrow buffers, offsets included) per stored token: what a
    layout costs before Parquet's own compression."""
    names = [n for n in ("token_positions", "token_logits", "token_labels", "token_lse", "start_logits",
                         "end_logits") if n in table.column_names]
    counted = table.column("start_logits" if layout.kind == "qa" else "token_positions")
    tokens = pc.sum(pc.list_value_length(counted)).as_py() or 0
    return sum(table.column(n).nbytes for n in names) / max(tokens, 1)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(-1, keepdims=True) if x.size else np.zeros((0, 1), np.float32)
    return (top + np.log(np.exp(x - top).sum(-1, keepdims=True)))[:, 0]


def ragged(rows: list, kind: pa.DataType) -> pa.Array:
    """Rows of varying length (numpy arrays, or lists of Python numbers) as one list<kind> column."""
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    dtype = kind.to_pandas_dtype()
    if rows and isinstance(rows[0], np.ndarray):
        flat = np.concatenate(rows).astype(dtype)
    else:
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=kind))
