"""The interface between the generic worker loop (``train.loop``) and what a job trains.

A role says what a worker builds (``build``: the model, its tokenizer, and for distillation the teacher and the
layer map), how rows become batches (``collate``) and how dev is scored (``metric``). The teacher step, the
student steps (distill, search trials) and the transfer tasks each implement one in their own package; the loop
calls nothing else of theirs. A role is a frozen dataclass of plain data: it travels to the workers inside the
``TrainSpec``, and its ``repr`` takes part in the run's name (``fit.run_name``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
from transformers import PreTrainedTokenizerBase

from xdray.distill.batches import collate
from xdray.distill.objective import DistillModule

if TYPE_CHECKING:
    from xdray.train.engine import TrainSpec


@dataclass
class Built:
    """What a worker trains: the wrapped model, and what distillation needs besides."""

    module: DistillModule
    tokenizer: PreTrainedTokenizerBase
    teacher: torch.nn.Module | None = None  # kept only for the online mode
    layer_map: tuple[int, ...] = ()
    teacher_loaded: bool = True
    teacher_forwards: list[int] = field(default_factory=lambda: [0])
    freeze_embeddings: bool = False
    save_tokenizer: PreTrainedTokenizerBase | None = None  # saved with the model (a pruned one), if not ``tokenizer``


@dataclass(frozen=True)
class Role:
    """A classifier on text rows, scored by accuracy; subclasses override what differs."""

    shards_dev = True
    """Whether ranks may score shares of dev and add them up (accuracy does; entity F1 or Pearson do not)."""

    def build(self, spec: TrainSpec) -> Built:
        raise NotImplementedError

    def collate(self, raw: dict[str, np.ndarray], tokenizer: PreTrainedTokenizerBase, max_length: int,
                device: torch.device | str) -> dict:
        return collate(raw, tokenizer, max_length, device)

    def metric(self, dev: pa.Table, tokenizer: PreTrainedTokenizerBase, max_length: int
               ) -> Callable[[list[torch.Tensor], list[torch.Tensor]], dict] | None:
        """Dev metrics from the (logits, labels) of every dev batch in order (``dev``: their rows), with a
        ``score`` to select on; None: accuracy."""
        return None


def count_forwards(model: torch.nn.Module) -> list[int]:
    """A counter of ``model``'s forward calls (one cell, updated by a hook): how many teacher passes ran."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    model.register_forward_pre_hook(hook)
    return calls
