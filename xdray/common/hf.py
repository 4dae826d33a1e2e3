"""Loading an HF encoder (local directory or hub id) under its task head: the teacher, a saved student.
Remote code runs only when a config asks for it; weights load from safetensors when the directory has them."""

from __future__ import annotations

from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


def head_class(task_type: str = "classification"):
    """The Auto class of a task type's head: one label per token, or one per sequence (classes, pairs,
    regression)."""
    return AutoModelForTokenClassification if task_type == "token_classification" else AutoModelForSequenceClassification


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
