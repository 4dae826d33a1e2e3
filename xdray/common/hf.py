"""Loading an HF encoder (local directory or hub id) as a sequence classifier: the teacher, a saved student.
Remote code runs only when a config asks for it; weights load from safetensors when the directory has them."""

from __future__ import annotations

from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def load_classifier(
    path: str, num_labels: int | None = None, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model + tokenizer; ``num_labels`` adds a fresh head to a bare encoder (teacher fine-tuning)."""
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    model = AutoModelForSequenceClassification.from_pretrained(
        path, trust_remote_code=trust_remote_code, use_safetensors=None, **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, tokenizer
