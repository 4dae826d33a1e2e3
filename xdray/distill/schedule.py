"""The progressive schedule: stages → phases, gradual top-down unfreezing, early stopping on dev, best-weight
restore. Plain torch; the Ray Train workers run it on a DeepSpeed engine, tests and benchmarks on a plain
optimizer (``TorchBackend``).

Freezing works through the optimizer: every block is its own parameter group, and a frozen group's learning
rate is 0, so AdamW leaves it exactly unchanged (its decoupled weight decay is scaled by the lr too). This works
the same under every ZeRO stage, where toggling ``requires_grad`` after the engine is built does not.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from xdray.distill.batches import model_inputs
from xdray.models.student import embedding_modules, encoder_blocks

HEAD = "head"
EMBEDDINGS = "embeddings"


@dataclass(frozen=True)
class Phase:
    """One trained unit of the schedule: a stage, or one sub-stage of a gradually unfrozen stage."""

    name: str
    data: str
    losses: tuple[str, ...]
    epochs: int
    patience: int | None
    monitor: str
    temperature: float
    trainable: tuple[str, ...] | None
    """Units trained besides the head (pooler, classifier, projections); None = every unit."""


def block_units(num_layers: int, freeze_embeddings: bool = False) -> list[str]:
    """Units in unfreezing order: top block first, embeddings last."""
    units = [f"block.{i}" for i in reversed(range(num_layers))]
    return units if freeze_embeddings else units + [EMBEDDINGS]


def expand_stages(stages: Iterable[dict], num_layers: int, freeze_embeddings: bool = False) -> list[Phase]:
    """Stages as configured → phases. A ``gradual`` stage becomes one phase per unit, each unfreezing the next
    unit top-down (``logits/block.2``, ``logits/block.1``, ..., ``logits/embeddings``): deterministic order."""
    phases = []
    for s in stages:
        base = dict(data=s["data"], losses=tuple(s["loss"]), epochs=s["epochs"], patience=s["patience"],
                    monitor=s["monitor"], temperature=s["temperature"])
        if s["unfreeze"] == "all":
            every = None if not freeze_embeddings else tuple(block_units(num_layers, True))
            phases.append(Phase(name=s["name"], trainable=every, **base))
            continue
        units = block_units(num_layers, freeze_embeddings)
        for k, unit in enumerate(units, start=1):
            phases.append(Phase(name=f"{s['name']}/{unit}", trainable=tuple(units[:k]), **base))
    return phases


def param_groups(module: nn.Module, weight_decay: float = 0.01) -> list[dict]:
    """One optimizer group per unit (``embeddings``, ``block.i``, ``head`` = everything else)."""
    student = getattr(module, "student", module)
    units = {EMBEDDINGS: embedding_modules(student)}
    units.update({f"block.{i}": [b] for i, b in enumerate(encoder_blocks(student))})
    groups, seen = [], set()
    for name, modules in units.items():
        params = [p for m in modules for p in m.parameters()]
        seen.update(id(p) for p in params)
        groups.append({"name": name, "params": params, "weight_decay": weight_decay})
    rest = [p for p in module.parameters() if id(p) not in seen]
    groups.append({"name": HEAD, "params": rest, "weight_decay": weight_decay})
    return groups


def set_trainable(optimizer: torch.optim.Optimizer, trainable: tuple[str, ...] | None, lr: float) -> list[str]:
    """Give trained groups ``lr`` and frozen ones 0; returns the trained unit names."""
    on = []
    for group in optimizer.param_groups:
        train = group["name"] == HEAD or trainable is None or group["name"] in trainable
        group["lr"] = lr if train else 0.0
        if train:
            on.append(group["name"])
    return on


def _score(phase: Phase, dev: dict[str, float]) -> tuple[float, ...]:
    """Higher is better. Accuracy ties (common on small dev sets) are broken by the dev loss."""
    if phase.monitor == "dev_accuracy":
        return (dev["accuracy"], -dev["loss"])
    return (-dev["loss"],)


class EarlyStopping:
    """Tracks the best dev score of a phase (higher is better); ``stop`` after ``patience`` epochs without
    improvement."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best: tuple[float, ...] | None = None
        self.best_epoch, self.bad = -1, 0

    def update(self, value: tuple[float, ...], epoch: int) -> bool:
        better = self.best is None or value > self.best
        if better:
            self.best, self.best_epoch, self.bad = value, epoch, 0
        else:
            self.bad += 1
        return better

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.bad >= self.patience


class Backend(Protocol):
    """How a phase trains: a DeepSpeed engine in the Ray workers, a plain optimizer in ``TorchBackend``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def step(self, loss: torch.Tensor) -> None: ...
    def save(self, tag: str) -> None: ...
    def restore(self, tag: str) -> None: ...
    def all_reduce(self, values: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """Single process: AdamW over the unit groups, best weights kept in memory."""

    def __init__(self, model: nn.Module, lr: float, grad_clip: float = 1.0):
        self.model, self.grad_clip = model, grad_clip
        self.optimizer = torch.optim.AdamW(param_groups(model), lr=lr)
        self._saved: dict[str, tuple[dict, dict]] = {}

    def step(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, tag: str) -> None:
        self._saved[tag] = copy.deepcopy((self.model.state_dict(), self.optimizer.state_dict()))

    def restore(self, tag: str) -> None:
        model_state, optimizer_state = self._saved[tag]
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        return values


@dataclass
class Data:
    """Where a phase's batches come from: ``train(phase, epoch)`` and ``dev(phase)`` yield model-ready batches
    (inputs, labels and the teacher targets the phase's objective needs)."""

    train: Callable[[Phase, int], Iterable[dict]]
    dev: Callable[[Phase], Iterable[dict]]


def run_schedule(
    backend: Backend,
    phases: list[Phase],
    objective_for: Callable[[Phase], Callable],
    data: Data,
    lr: float,
    on_epoch: Callable[[dict], None] = lambda record: None,
    on_step: Callable[[Phase, int, dict], None] = lambda phase, step, parts: None,
) -> list[dict]:
    """Train every phase; each keeps the best of its starting weights and its epochs by dev score (restored
    before the next phase). Returns one record per epoch. Selection reads dev only: test data never reaches
    this function."""
    history, step = [], 0
    for index, phase in enumerate(phases):
        trained = set_trainable(backend.optimizer, phase.trainable, lr)
        objective = objective_for(phase)
        stopper = EarlyStopping(phase.patience)
        tag, last = f"best-{index}", -1
        # the weights the phase starts from are a candidate too: a phase never ends worse on dev than it began
        # (the paper restores the best weights between stages)
        stopper.update(_score(phase, evaluate(backend, objective, data.dev(phase))), -1)
        backend.save(tag)
        for epoch in range(phase.epochs):
            backend.model.train()
            t0, seen, loss_sum, batches = time.perf_counter(), 0, 0.0, 0
            for batch in data.train(phase, epoch):
                parts = objective(backend.model(**model_inputs(batch), **objective.forward_kwargs()), batch)
                backend.step(parts["total"])
                step, batches, seen = step + 1, batches + 1, seen + len(batch["input_ids"])
                loss_sum += parts["total"].item()
                on_step(phase, step, parts)
            elapsed = time.perf_counter() - t0
            dev = evaluate(backend, objective, data.dev(phase))
            last = epoch
            if stopper.update(_score(phase, dev), epoch) and epoch < phase.epochs - 1:
                backend.save(tag)
            record = {
                "stage": phase.name, "epoch": epoch, "step": step, "loss": loss_sum / max(batches, 1),
                "dev_loss": dev["loss"], "dev_accuracy": dev["accuracy"], "monitor": phase.monitor,
                "trained_units": trained, "samples": seen, "seconds": elapsed,
            }
            history.append(record)
            on_epoch(record)
            if stopper.stop:
                break
        if stopper.best_epoch != last:
            backend.restore(tag)
        history[-1]["best_epoch"] = stopper.best_epoch  # -1: no epoch beat the starting weights, which were kept
    return history


@torch.no_grad()
def evaluate(backend: Backend, objective: Callable, batches: Iterable[dict]) -> dict[str, float]:
    """Dev loss (the phase's objective) and accuracy, summed over this rank's share and all-reduced."""
    backend.model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, rows, correct, labelled rows
    for batch in batches:
        out = backend.model(**model_inputs(batch), **objective.forward_kwargs())
        n = len(batch["input_ids"])
        if "labels" in batch:
            totals[2] += float((out["logits"].argmax(-1) == batch["labels"]).sum())
            totals[3] += n
        totals[0] += float(objective(out, batch)["total"]) * n
        totals[1] += n
    totals = backend.all_reduce(totals)
    backend.model.train()
    return {
        "loss": float(totals[0] / totals[1]) if totals[1] else float("nan"),
        "accuracy": float(totals[2] / totals[3]) if totals[3] else float("nan"),
    }
