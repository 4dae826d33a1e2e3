"""Loading an HF encoder (local directory or hub id) under its task head: the teacher, a saved student.
Remote code runs only when a config asks for it; weights load from safetensors when the directory has them."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


def head_class(task_type: str = "classification"):
    """The Auto class of a task type's head: one label per token, a start and an end score per token (extractive
    QA), or one label per sequence (classes, pairs, regression)."""
    return {"token_classification": AutoModelForTokenClassification,
            "question_answering": AutoModelForQuestionAnswering}.get(task_type, AutoModelForSequenceClassification)


def head_logits(output) -> torch.Tensor:
    """A head's scores as one tensor: ``logits``, or a QA head's start and end logits stacked (B, T, 2)."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else torch.stack([output.start_logits, output.end_logits], -1)


def load_classifier(
    path: str, num_labels: int | None = None, trust_remote_code: bool = False, task_type: str = "classification",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model + tokenizer; ``num_labels`` adds a fresh head to a bare encoder (teacher fine-tuning)."""
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    model = head_class(task_type).from_pretrained(
        path, trust_remote_code=trust_remote_code, use_safetensors=None, **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, tokenizer
