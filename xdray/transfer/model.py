"""What a transfer worker builds for a task: the model with a fresh head on the student's encoder, and the
collate function that turns rows into batches (first-sub-word tag labels for token tasks, float targets for
regression, question + context windows with the answer's token span for question answering). Plain torch and transformers; ``transfer.role.TransferRole`` calls it on the workers."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from xdray.common.hf import head_class
from xdray.distill.batches import collate, model_inputs, to_device
from xdray.distill.token_layout import word_tags
from xdray.errors import XdrayError
from xdray.transfer.qa import qa_windows


def load_saved(path: str, task: dict) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved model of ``task`` as it is (its own head), with its tokenizer."""
    return head_class(task["type"]).from_pretrained(path), AutoTokenizer.from_pretrained(path)


def load_task_model(path: str, task: dict, seed: int = 0, trust_remote_code: bool = False
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The encoder of ``path`` (an xdray student, or any HF encoder) under a new head for ``task``. A head the
    checkpoint already has (the source task's classifier) is re-initialised: it was trained for other classes."""
    kwargs = {"num_labels": task["num_labels"]}
    if task["names"]:
        kwargs |= {"id2label": dict(enumerate(task["names"])), "label2id": {n: i for i, n in enumerate(task["names"])}}
    kwargs["problem_type"] = "regression" if task["type"] == "regression" else None
    torch.manual_seed(seed)
    model = head_class(task["type"]).from_pretrained(path, trust_remote_code=trust_remote_code,
                                              ignore_mismatched_sizes=True, **kwargs)
    std = getattr(model.config, "initializer_range", 0.02)
    for head in (m for m in model.children() if m is not model.base_model):
        for module in head.modules():
            if isinstance(module, torch.nn.Linear):  # as HF initialises heads
                torch.nn.init.normal_(module.weight, std=std)
                torch.nn.init.zeros_(module.bias)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if task["type"] in ("token_classification", "question_answering") and not tokenizer.is_fast:
        raise XdrayError(f"{path}: {task['type'].replace('_', ' ')} needs a fast tokenizer (word ids, offsets); fix: "
                         "save the model with a tokenizer.json")
    return model, tokenizer


def token_collate(raw: dict[str, np.ndarray], tokenizer: PreTrainedTokenizerBase, max_length: int,
                  device: torch.device | str) -> dict:
    """Words → sub-word inputs; each word's tag goes on its first sub-word, -100 on the rest, on special
    tokens and on padding (so the loss and the metric skip them). Words cut off by ``max_length`` are dropped."""
    words = [[str(w) for w in row] for row in raw["tokens"]]
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length, padding=True,
                    return_tensors="pt")
    labels = torch.tensor([word_tags(enc.word_ids(i), tags) for i, tags in enumerate(raw["tags"])], dtype=torch.long)
    return to_device(model_inputs(enc) | {"labels": labels}, device)


def regression_collate(raw: dict[str, np.ndarray], tokenizer: PreTrainedTokenizerBase, max_length: int,
                       device: torch.device | str) -> dict:
    batch = collate({k: v for k, v in raw.items() if k != "label"}, tokenizer, max_length, device)
    batch["labels"] = torch.tensor(np.asarray(raw["label"], dtype=np.float32)).to(device)
    return batch


def qa_collate(raw: dict[str, np.ndarray], tokenizer: PreTrainedTokenizerBase, max_length: int,
               device: torch.device | str, stride: int) -> dict:
    """Examples → their windows (a long context gives several, so a batch may hold more windows than rows), with
    labels (W, 2): the first answer's first and last token in each window, (0, 0) at [CLS] where it is not inside."""
    answers = [(int(starts[0]), str(texts[0])) if len(texts) else None
               for texts, starts in zip(raw["answers"], raw["answer_starts"])]
    windows = qa_windows(tokenizer, [str(q) for q in raw["question"]], [str(c) for c in raw["context"]], max_length,
                         stride, answers)
    features = {"input_ids": windows.input_ids} | (
        {"token_type_ids": windows.token_type_ids} if windows.token_type_ids is not None else {})
    enc = tokenizer.pad(features, return_tensors="pt")
    labels = torch.tensor([windows.start_positions, windows.end_positions], dtype=torch.long).T
    return to_device(model_inputs(enc) | {"labels": labels}, device)


def task_collate(task: dict) -> Callable[..., dict]:
    if task["type"] == "question_answering":
        return partial(qa_collate, stride=task["stride"])
    return {"token_classification": token_collate, "regression": regression_collate}.get(task["type"], collate)


def task_loss(task: dict) -> str:
    return {"regression": "label_mse", "question_answering": "span_ce"}.get(task["type"], "ce")
