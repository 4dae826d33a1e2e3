"""Turning rows into padded tensors, and dev/test accuracy — plain torch, shared by workers and the driver."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from transformers import PreTrainedTokenizerBase

from xdray.distill.losses import IGNORE_INDEX
from xdray.distill.token_layout import Layout, span_targets, token_targets

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch) -> dict:
    """The model's keyword inputs out of a batch (or a tokenizer encoding) that also carries targets."""
    return {k: batch[k] for k in INPUTS if k in batch}


def collate(
    raw: dict[str, np.ndarray], tokenizer: PreTrainedTokenizerBase, max_length: int, device: torch.device | str,
    layout: Layout | None = None,
) -> dict:
    """A Ray Data numpy batch → model inputs and targets, padded to the longest row of the batch.

    Rows carry either ``input_ids`` (+ ``token_type_ids`` for pairs; the labelled Parquet, tokenized once by
    the labelling job) or ``text`` (+ ``text_pair``; labeled splits, tokenized here). Teacher targets:
    ``logits`` and ``hidden_<k>`` (the teacher's [CLS] state of hidden layer k), or a token task's per-token
    columns (read with ``layout``, see ``distill.token_layout``) and its dev ``token_tags``, or a QA window's
    start/end logits and its dev answer span.
    """
    if "input_ids" in raw:
        batch = {"input_ids": _pad(raw["input_ids"], max_length, tokenizer.pad_token_id)}
        batch["attention_mask"] = _pad([np.ones(len(r)) for r in raw["input_ids"]], max_length, 0)
        if "token_type_ids" in raw:
            batch["token_type_ids"] = _pad(raw["token_type_ids"], max_length, 0)
    else:
        pairs = [str(t) for t in raw["text_pair"]] if "text_pair" in raw else None
        enc = tokenizer([str(t) for t in raw["text"]], pairs, truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        batch = model_inputs(enc)
    if "token_positions" in raw:
        batch |= token_targets(raw, batch["input_ids"].shape[1], layout)
    if "token_tags" in raw:
        batch["labels"] = _pad(raw["token_tags"], max_length, IGNORE_INDEX)
    if "start_logits" in raw:
        batch |= span_targets(raw, batch["input_ids"].shape[1])
    if "start_positions" in raw:  # labelled QA dev windows: the answer's first and last token, (0, 0) outside
        batch["labels"] = torch.tensor(np.stack([raw["start_positions"], raw["end_positions"]], -1), dtype=torch.long)
    if "logits" in raw:
        batch["teacher_logits"] = torch.from_numpy(np.stack([np.asarray(r, dtype=np.float32) for r in raw["logits"]]))
    hidden = {int(k.removeprefix("hidden_")): k for k in raw if k.startswith("hidden_")}
    if hidden:
        batch["teacher_hidden"] = {
            layer: torch.from_numpy(np.stack([np.asarray(r, dtype=np.float32) for r in raw[col]]))
            for layer, col in sorted(hidden.items())
        }
    if "label" in raw:
        batch["labels"] = torch.tensor(np.asarray(raw["label"]), dtype=torch.long)  # copies the read-only Arrow buffer
    return to_device(batch, device)


def table_batches(table: pa.Table, size: int) -> list[dict[str, np.ndarray]]:
    """A pyarrow table as numpy batches in the layout Ray Data's ``iter_batches`` gives (list cells → arrays)."""
    return [
        {name: col.to_numpy(zero_copy_only=False) for name, col in zip(part.column_names, part.columns)}
        for part in (table.slice(lo, size) for lo in range(0, table.num_rows, size))
    ]


def to_device(batch: dict, device: torch.device | str) -> dict:
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


def _pad(rows, max_length: int, value: int) -> torch.Tensor:
    rows = [np.asarray(r, dtype=np.int64)[:max_length] for r in rows]
    out = np.full((len(rows), max(len(r) for r in rows)), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    """Index batches of similar-length texts, so padding wastes little compute."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for lo in range(0, len(order), batch_size):
        yield order[lo : lo + batch_size]


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    pairs: Sequence[str] | None = None,
) -> np.ndarray:
    """Predicted class ids, in input order."""
    was_training = model.training
    model.eval()
    preds = np.zeros(len(texts), dtype=np.int64)
    for idx in length_sorted_batches(texts, batch_size):
        raw = {"text": [texts[i] for i in idx]} | ({"text_pair": [pairs[i] for i in idx]} if pairs else {})
        logits = model(**collate(raw, tokenizer, max_length, device)).logits
        preds[idx] = logits.argmax(-1).cpu().numpy()
    model.train(was_training)
    return preds


def accuracy(preds: np.ndarray, labels: Sequence[int]) -> float:
    return float((preds == np.asarray(labels)).mean()) if len(labels) else 0.0
