"""A transfer task's role in the worker loop: the student's encoder under a fresh head for the task, the task's
batches (word tags, float targets, QA windows) and its dev metric, scored on all of dev by every rank."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from transformers import PreTrainedTokenizerBase

from xdray.distill.objective import DistillModule
from xdray.train.engine import TrainSpec
from xdray.train.role import Built, Role
from xdray.transfer.metrics import split_metric
from xdray.transfer.model import load_task_model, task_collate


@dataclass(frozen=True)
class TransferRole(Role):
    task: dict  # ``TaskData.worker_spec()``: type, number and names of classes

    shards_dev = False  # entity F1, Pearson and Matthews do not add up across shards

    def build(self, spec: TrainSpec) -> Built:
        model, tokenizer = load_task_model(spec.init, self.task, spec.seed, spec.trust_remote_code)
        return Built(DistillModule(model, None, 0), tokenizer)

    def collate(self, raw: dict[str, np.ndarray], tokenizer: PreTrainedTokenizerBase, max_length: int,
                device: torch.device | str) -> dict:
        return task_collate(self.task)(raw, tokenizer, max_length, device)

    def metric(self, dev: pa.Table, tokenizer: PreTrainedTokenizerBase, max_length: int
               ) -> Callable[[list[torch.Tensor], list[torch.Tensor]], dict]:
        return split_metric(self.task, dev.to_pylist(), tokenizer, max_length)
