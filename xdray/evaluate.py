"""Test accuracy and CPU latency of a saved HF classifier, measured in the driver process."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from xdray.data.tables import LabeledSplit
from xdray.distill.batches import accuracy, predict
from xdray.models.teacher import load_classifier


def test_accuracy(model_dir: Path, split: LabeledSplit, max_length: int) -> float:
    model, tokenizer = load_classifier(str(model_dir))
    return accuracy(predict(model, tokenizer, split.texts, max_length, pairs=split.pairs), split.labels)


@torch.inference_mode()
def cpu_latency_ms(model_dir: Path, texts: list[str], max_length: int, threads: int = 1, warmup: int = 5) -> float:
    """Mean milliseconds per sentence at batch size 1 on ``threads`` CPU threads (how a small service runs)."""
    model, tokenizer = load_classifier(str(model_dir))
    model.eval()
    encoded = [tokenizer(t, truncation=True, max_length=max_length, return_tensors="pt") for t in texts]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for enc in encoded[:warmup]:
            model(**enc)
        t0 = time.perf_counter()
        for enc in encoded:
            model(**enc)
        return (time.perf_counter() - t0) * 1000 / len(encoded)
    finally:
        torch.set_num_threads(previous)
