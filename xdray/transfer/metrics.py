"""Task metrics for transfer, from logits and labels (plain numpy/torch): each returns its figures and
``score``, the headline that early stopping and model selection use.

- classification and sentence pairs: accuracy (score) and macro F1;
- token classification: entity-level precision, recall and F1 (score) with seqeval, over the first sub-word
  of each word (positions labelled -100 are padding, special tokens or later sub-words and are left out);
- regression: Pearson (score) and Spearman correlation, and MSE;
- question answering: SQuAD exact match and F1 (score) of the answers extracted across each example's windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from xdray.distill.losses import IGNORE_INDEX


def split_metric(task: dict, rows: list[dict], tokenizer: PreTrainedTokenizerBase, max_length: int
                 ) -> Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], dict[str, float]]:
    """The metric of one split scored in batches of its ``rows`` in order: ``task_metrics``, or for question
    answering the answers extracted from the windows' logits (the windows of all rows, as the batches made them)
    against the gold texts."""
    if task["type"] != "question_answering":
        return lambda logits, labels: task_metrics(task, logits, labels)
    from xdray.transfer.qa import extract_answers, qa_windows, squad_metrics

    contexts = [r["context"] for r in rows]
    windows = qa_windows(tokenizer, [r["question"] for r in rows], contexts, max_length, task["stride"])

    def metric(logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> dict[str, float]:
        per_window = [w for batch in logits for w in batch.float().numpy()]
        if len(per_window) != len(windows.example):
            raise ValueError(f"{len(per_window)} windows scored, the split's examples make {len(windows.example)}; "
                             "the windows were cut with another tokenizer, max_length or stride")
        answers = extract_answers(windows, [w[:, 0] for w in per_window], [w[:, 1] for w in per_window], contexts,
                                  allow_null=task["allow_null"])
        return squad_metrics(answers, [r["answers"] for r in rows])

    return metric


def task_metrics(task: dict, logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> dict[str, float]:
    """``task`` is ``TaskData.worker_spec()``; one logits/labels tensor per batch."""
    if task["type"] == "regression":
        preds = np.concatenate([x.reshape(-1).numpy() for x in logits])
        return regression_metrics(preds, np.concatenate([y.reshape(-1).numpy() for y in labels]))
    if task["type"] == "token_classification":
        names = task["names"]
        gold, pred = [], []
        for x, y in zip(logits, labels):
            for row_pred, row_gold in zip(x.argmax(-1).numpy(), y.numpy()):
                keep = row_gold != IGNORE_INDEX
                gold.append([names[i] for i in row_gold[keep]])
                pred.append([names[i] for i in row_pred[keep]])
        return entity_metrics(gold, pred)
    preds = np.concatenate([x.argmax(-1).numpy() for x in logits])
    return classification_metrics(preds, np.concatenate([y.numpy() for y in labels]), task["num_labels"])


def classification_metrics(preds: np.ndarray, gold: np.ndarray, num_labels: int) -> dict[str, float]:
    from sklearn.metrics import f1_score

    accuracy = float((preds == gold).mean()) if len(gold) else float("nan")
    macro = f1_score(gold, preds, labels=list(range(num_labels)), average="macro", zero_division=0)
    return {"score": accuracy, "accuracy": accuracy, "macro_f1": float(macro)}


def regression_metrics(preds: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    constant = len(gold) < 2 or np.ptp(preds) == 0 or np.ptp(gold) == 0  # correlation undefined: score 0
    pearson = 0.0 if constant else float(pearsonr(preds, gold).statistic)
    spearman = 0.0 if constant else float(spearmanr(preds, gold).statistic)
    return {"score": pearson, "pearson": pearson, "spearman": spearman, "mse": float(np.mean((preds - gold) ** 2))}


def entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level scores in the CoNLL sense (an entity counts only when its type and span both match)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    f1 = float(f1_score(gold, pred, zero_division=0))
    return {"score": f1, "f1": f1, "precision": float(precision_score(gold, pred, zero_division=0)),
            "recall": float(recall_score(gold, pred, zero_division=0))}


def headline(task_type: str) -> str:
    """The name of ``score`` for a task type."""
    return {"regression": "pearson", "token_classification": "f1", "question_answering": "f1"}.get(task_type, "accuracy")
