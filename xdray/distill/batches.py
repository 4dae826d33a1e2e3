"""Turning rows into padded tensors, and dev/test accuracy — plain torch, shared by workers and the driver."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


def collate(
    raw: dict[str, np.ndarray], tokenizer: PreTrainedTokenizerBase, max_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """A Ray Data numpy batch → model inputs and targets, padded to the longest row of the batch.

    Rows carry either ``input_ids`` (the labelled transfer set: tokenized once, by the labelling job) or
    ``text`` (labeled splits, tokenized here).
    """
    if "input_ids" in raw:
        ids = [np.asarray(r, dtype=np.int64)[:max_length] for r in raw["input_ids"]]
        width = max(len(r) for r in ids)
        input_ids = np.full((len(ids), width), tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, r in enumerate(ids):
            input_ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    else:
        enc = tokenizer(
            [str(t) for t in raw["text"]], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "logits" in raw:
        batch["teacher_logits"] = torch.from_numpy(np.stack([np.asarray(r, dtype=np.float32) for r in raw["logits"]]))
    if "label" in raw:
        batch["labels"] = torch.tensor(np.asarray(raw["label"]), dtype=torch.long)  # copies the read-only Arrow buffer
    return {k: v.to(device) for k, v in batch.items()}


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
) -> np.ndarray:
    """Predicted class ids, in input order."""
    was_training = model.training
    model.eval()
    preds = np.zeros(len(texts), dtype=np.int64)
    for idx in length_sorted_batches(texts, batch_size):
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        ).to(device)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        preds[idx] = logits.argmax(-1).cpu().numpy()
    model.train(was_training)
    return preds


def accuracy(preds: np.ndarray, labels: Sequence[int]) -> float:
    return float((preds == np.asarray(labels)).mean()) if len(labels) else 0.0
