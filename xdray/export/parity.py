"""Torch against its ONNX graphs on the task's real splits: every variant scores the same batches, so the largest
logit difference and each variant's task metrics come from one pass. Plain torch + onnxruntime; no Ray."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import torch

from xdray.common.hf import head_logits
from xdray.distill.batches import model_inputs, table_batches
from xdray.transfer.metrics import split_metric
from xdray.transfer.model import task_collate
from xdray.transfer.tasks import TaskData

EVAL_BATCH = 64

Forward = Callable[..., torch.Tensor]


def row_length(row: dict) -> int:
    if "tokens" in row:
        return len(row["tokens"])
    if "question" in row:
        return len(row["question"]) + len(row["context"])
    return len(row["text"]) + len(row.get("text_pair", ""))


def row_text(row: dict) -> str:
    """A task row as one string (token tasks: the words joined; QA: question then context), what latency timing
    and serving examples feed."""
    if "tokens" in row:
        return " ".join(row["tokens"])
    return f"{row['question']} {row['context']}" if "question" in row else row["text"]


@torch.inference_mode()
def compare_variants(variants: dict[str, Forward], data: TaskData, tokenizer, max_length: int,
                     splits: tuple[str, ...] = ("dev", "test"), reference: str = "torch_fp32") -> dict:
    """``{"metrics": {variant: {split: {...}}}, "max_abs_diff": {variant: {split: d}}}``: each variant's task metrics
    and its largest absolute logit difference from ``reference`` (token tasks: over real tokens only; padding
    positions carry no prediction)."""
    task = data.worker_spec()
    collate = task_collate(task)
    metrics: dict[str, dict] = {v: {} for v in variants}
    diffs: dict[str, dict] = {v: {} for v in variants if v != reference}
    for split in splits:
        rows = sorted(data.split(split), key=row_length)
        logits: dict[str, list[torch.Tensor]] = {v: [] for v in variants}
        labels, worst = [], dict.fromkeys(diffs, 0.0)
        for raw in table_batches(pa.Table.from_pylist(rows), EVAL_BATCH):
            batch = collate(raw, tokenizer, max_length, "cpu")
            inputs = model_inputs(batch)
            out = {v: _logits(forward(**inputs)) for v, forward in variants.items()}
            for v in worst:
                gap = (out[v] - out[reference]).abs()
                if gap.dim() == 3:  # per token: keep real positions
                    gap = gap[inputs["attention_mask"].bool()]
                worst[v] = max(worst[v], float(gap.max()) if gap.numel() else 0.0)
            for v, x in out.items():
                logits[v].append(x)
            labels.append(batch["labels"])
        metric = split_metric(task, rows, tokenizer, max_length)
        for v in variants:
            metrics[v][split] = {k: round(x, 5) for k, x in metric(logits[v], labels).items()}
        for v in diffs:
            diffs[v][split] = worst[v]
    return {"metrics": metrics, "max_abs_diff": diffs}


def _logits(output) -> torch.Tensor:
    return (output if isinstance(output, torch.Tensor) else head_logits(output)).float()
