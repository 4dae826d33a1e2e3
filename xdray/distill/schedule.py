"""The progressive schedule: stages → phases, gradual top-down unfreezing, early stopping on dev, best-weight
restore. Plain torch; the Ray Train workers run it on a DeepSpeed engine, tests and benchmarks on a plain
optimizer (``TorchBackend``).

Which units a phase trains and how the others are frozen is ``distill.units``'. Every phase and epoch ends on
an optimizer step: with gradient accumulation, a trailing group of fewer than ``grad_accum`` micro-batches is
dropped (not trained), so every update averages the same number of micro-batches and nothing carries over into
the next epoch, phase or best-weight restore; steps (warmup, checkpoints, logged ``step``) count updates.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from torch import nn

from xdray.distill.batches import model_inputs
from xdray.distill.units import UnitAdamW, block_units, param_groups, set_lr, set_trainable


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


def _score(phase: Phase, dev: dict[str, float]) -> tuple[float, ...]:
    """Higher is better. Accuracy ties (common on small dev sets) are broken by the dev loss."""
    if phase.monitor in ("dev_accuracy", "dev_score"):
        return (dev[phase.monitor.removeprefix("dev_")], -dev["loss"])
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
    """What runs the forward pass (the engine, or the module itself)."""
    module: nn.Module
    """The bare module, whose units ``set_trainable`` freezes."""
    optimizer: torch.optim.Optimizer
    grad_accum: int

    def step(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch; an optimizer step after every ``grad_accum`` of them."""

    def save(self, tag: str) -> None: ...
    def restore(self, tag: str) -> None: ...

    def all_reduce(self, values: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Across every rank ("sum" or "max"): the training figures."""

    def all_reduce_dev(self, values: torch.Tensor) -> torch.Tensor:
        """Across ranks when each scored a share of dev (else unchanged)."""


class TorchBackend:
    """Single process: AdamW over the unit groups, best weights kept in memory."""

    def __init__(self, model: nn.Module, lr: float, grad_clip: float = 1.0, grad_accum: int = 1):
        self.model = self.module = model
        self.grad_clip, self.grad_accum, self._micro = grad_clip, grad_accum, 0
        self.optimizer = UnitAdamW(param_groups(model), lr=lr)
        self._saved: dict[str, tuple[dict, dict]] = {}

    def step(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()
        self._micro += 1
        if self._micro % self.grad_accum:
            return
        if self.grad_clip:  # parameters without a gradient (frozen units) are left out of the norm
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, tag: str) -> None:
        self._saved[tag] = copy.deepcopy((self.model.state_dict(), self.optimizer.state_dict()))

    def restore(self, tag: str) -> None:
        model_state, optimizer_state = self._saved[tag]
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)

    def all_reduce(self, values: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return values

    def all_reduce_dev(self, values: torch.Tensor) -> torch.Tensor:
        return values


@dataclass
class Data:
    """Where a phase's batches come from: ``train(phase, epoch, skip)`` yields the epoch's model-ready batches
    after its first ``skip`` (a resumed epoch), ``dev(phase)`` the dev batches; both carry inputs, labels and the
    teacher targets the phase's objective needs. ``metric`` scores dev predictions as a task needs it (see
    ``evaluate``)."""

    train: Callable[[Phase, int, int], Iterable[dict]]
    dev: Callable[[Phase], Iterable[dict]]
    metric: Callable[[list[torch.Tensor], list[torch.Tensor]], dict[str, float]] | None = None


@dataclass
class Position:
    """Where the schedule is, as plain JSON data: what a checkpoint needs besides the weights and optimizer
    state to continue exactly (stage, epoch, batches done in it, early-stopping state, the epoch records)."""

    phase: int = 0
    epoch: int = 0
    batch: int = 0
    """Micro-batches of ``epoch`` already trained: a resumed epoch skips them."""
    step: int = 0
    """Optimizer steps so far."""
    phase_step: int = 0
    """Optimizer steps since the phase began (drives the warmup)."""
    best: list[float] | None = None
    """The phase's best dev score so far (None: the phase has not started); its weights are the ``best_tag``."""
    best_epoch: int = -1
    bad: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    tokens: int = 0
    """Non-padding tokens of the epoch's trained batches."""
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)

    @property
    def best_tag(self) -> str | None:
        """The saved weights a resumed phase needs (its best so far); None between phases."""
        return f"best-{self.phase}" if self.best is not None else None

    def state(self) -> dict:
        return asdict(self)


def run_schedule(
    backend: Backend,
    phases: list[Phase],
    objective_for: Callable[[Phase], Callable],
    data: Data,
    lr: float,
    on_epoch: Callable[[dict], None] = lambda record: None,
    on_step: Callable[[Phase, int, dict], None] = lambda phase, step, parts: None,
    *,
    warmup_steps: int = 0,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[Position], None] | None = None,
    resume: dict | None = None,
) -> list[dict]:
    """Train every phase; each keeps the best of its starting weights and its epochs by dev score (restored
    before the next phase). Returns one record per epoch. Selection reads dev only: test data never reaches
    this function.

    ``on_checkpoint`` receives the ``Position`` every ``checkpoint_every`` steps and at each phase end but the
    last; the caller saves the weights (and the phase's best tag) with it. ``resume`` is such a position's
    ``state()``: the caller has restored the weights and the best tag, and the schedule continues from there.
    Each phase's learning rate warms up linearly over its first ``warmup_steps`` steps."""
    pos = Position(**resume) if resume else Position()
    for index in range(pos.phase, len(phases)):
        phase = phases[index]
        trained = set_trainable(backend.module, backend.optimizer, phase.trainable, lr)
        objective = objective_for(phase)
        stopper = EarlyStopping(phase.patience)
        if pos.best is None:
            # the weights the phase starts from are a candidate too: a phase never ends worse on dev than it
            # began (the paper restores the best weights between stages)
            stopper.update(_score(phase, evaluate(backend, objective, data.dev(phase), data.metric)), -1)
            backend.save(f"best-{index}")
        else:
            stopper.best, stopper.best_epoch, stopper.bad = tuple(pos.best), pos.best_epoch, pos.bad
        pos.best, pos.best_epoch, pos.bad = list(stopper.best), stopper.best_epoch, stopper.bad
        tag, last = pos.best_tag, pos.epoch - 1
        for epoch in range(pos.epoch, phase.epochs):
            backend.model.train()
            t0 = time.perf_counter()
            pending: list[dict] = []
            for batch in data.train(phase, epoch, pos.batch):
                pending.append(batch)
                if len(pending) < backend.grad_accum:
                    continue
                if pos.phase_step < warmup_steps:
                    set_lr(backend.optimizer, lr * (pos.phase_step + 1) / warmup_steps)
                for micro in pending:
                    parts = objective(backend.model(**model_inputs(micro), **objective.forward_kwargs()), micro)
                    backend.step(parts["total"])
                    pos.loss_sum += parts["total"].item()
                    pos.samples += len(micro["input_ids"])
                    pos.tokens += int(micro["attention_mask"].sum())
                pos.step, pos.phase_step, pos.batch = pos.step + 1, pos.phase_step + 1, pos.batch + len(pending)
                pending = []  # an incomplete group left at the epoch's end is dropped (module docstring)
                on_step(phase, pos.step, parts)
                if on_checkpoint and checkpoint_every and pos.step % checkpoint_every == 0:
                    pos.seconds += time.perf_counter() - t0
                    on_checkpoint(pos)
                    t0 = time.perf_counter()
            pos.seconds += time.perf_counter() - t0
            dev = evaluate(backend, objective, data.dev(phase), data.metric)
            last = epoch
            if stopper.update(_score(phase, dev), epoch) and epoch < phase.epochs - 1:
                backend.save(tag)
            record = {
                "stage": phase.name, "epoch": epoch, "step": pos.step, **_train_figures(backend, pos),
                "dev_loss": dev["loss"], "dev_accuracy": dev["accuracy"], "dev_score": dev["score"],
                "monitor": phase.monitor, "trained_units": trained,
            }
            pos.history.append(record)
            pos.epoch, pos.batch, pos.loss_sum, pos.samples, pos.tokens, pos.seconds = epoch + 1, 0, 0.0, 0, 0, 0.0
            pos.best, pos.best_epoch, pos.bad = list(stopper.best), stopper.best_epoch, stopper.bad
            on_epoch(record)
            if stopper.stop:
                break
        if stopper.best_epoch != last:
            backend.restore(tag)
        pos.history[-1]["best_epoch"] = stopper.best_epoch  # -1: no epoch beat the starting weights, which were kept
        pos = Position(phase=index + 1, step=pos.step, history=pos.history)
        if on_checkpoint and index < len(phases) - 1:
            on_checkpoint(pos)
    return pos.history


def _train_figures(backend: Backend, pos: Position) -> dict:
    """The epoch's training loss (mean over every rank's micro-batches), samples and tokens (summed over ranks)
    and their rates over the slowest rank's time."""
    sums = backend.all_reduce(torch.tensor([pos.loss_sum, pos.batch, pos.samples, pos.tokens], dtype=torch.float64))
    seconds = float(backend.all_reduce(torch.tensor([pos.seconds], dtype=torch.float64), "max")[0])
    loss_sum, batches, samples, tokens = sums.tolist()
    return {"loss": loss_sum / max(batches, 1), "samples": int(samples), "tokens": int(tokens), "seconds": seconds,
            "samples_per_s": samples / max(seconds, 1e-9), "tokens_per_s": tokens / max(seconds, 1e-9)}


@torch.no_grad()
def evaluate(backend: Backend, objective: Callable, batches: Iterable[dict],
             metric: Callable[[list[torch.Tensor], list[torch.Tensor]], dict[str, float]] | None = None
             ) -> dict[str, float]:
    """Dev loss (the phase's objective) and accuracy, summed over this rank's share and all-reduced; ``score``
    is the accuracy. With a ``metric`` (transfer tasks: entity F1, Pearson, ...), which takes the logits and
    labels of every batch, ``score`` and the other figures are its own: the caller gives each rank all of dev,
    as such metrics do not add up across shards."""
    backend.model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, rows, correct, labelled rows
    logits, labels = [], []
    for batch in batches:
        out = backend.model(**model_inputs(batch), **objective.forward_kwargs())
        n = len(batch["input_ids"])
        if metric is not None:
            logits.append(out["logits"].float().cpu())
            labels.append(batch["labels"].cpu())
        elif "labels" in batch:
            totals[2] += float((out["logits"].argmax(-1) == batch["labels"]).sum())
            totals[3] += n
        totals[0] += float(objective(out, batch)["total"]) * n
        totals[1] += n
    totals = backend.all_reduce_dev(totals)
    backend.model.train()
    result = {
        "loss": float(totals[0] / totals[1]) if totals[1] else float("nan"),
        "accuracy": float(totals[2] / totals[3]) if totals[3] else float("nan"),
    }
    if metric is None:
        return result | {"score": result["accuracy"]}
    return result | {"accuracy": float("nan")} | metric(logits, labels)
