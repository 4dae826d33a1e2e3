"""The student's trainable units (``embeddings``, ``block.i``, ``head``) and how a phase freezes them.

Freezing is real, under every ZeRO stage: a frozen unit's parameters stop requiring gradients, so its forward
builds no autograd graph (top-down unfreezing freezes a prefix of the network, which then runs as plain
inference), it gets no gradient and adds nothing to the clip norm; and its optimizer groups are skipped, so
AdamW's moments and step count stay exactly as they were (ZeRO zero-fills the missing gradients of its flat
partitions, which a plain AdamW would still fold into the moments). Each unit is one or two optimizer groups:
biases and norm weights are exempt from weight decay, as Hugging Face's trainers do.
"""

from __future__ import annotations

import torch
from torch import nn

from xdray.distill.architectures import embedding_modules, encoder_blocks

HEAD = "head"
EMBEDDINGS = "embeddings"
WEIGHT_DECAY = 0.01


def block_units(num_layers: int, freeze_embeddings: bool = False) -> list[str]:
    """Units in unfreezing order: top block first, embeddings last."""
    units = [f"block.{i}" for i in reversed(range(num_layers))]
    return units if freeze_embeddings else units + [EMBEDDINGS]


def unit_parameters(module: nn.Module) -> dict[str, list[tuple[str, nn.Parameter, bool]]]:
    """Each unit's (name, parameter, decays) in module order; ``head`` is everything outside the embeddings and
    blocks (pooler, classifier, projections). ``decays`` is False for biases and norm weights."""
    student = getattr(module, "student", module)
    owners = {EMBEDDINGS: embedding_modules(student)}
    owners.update({f"block.{i}": [b] for i, b in enumerate(encoder_blocks(student))})
    unit_of = {id(p): unit for unit, modules in owners.items() for m in modules for p in m.parameters()}
    norms = {id(p) for m in module.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    units: dict[str, list] = {name: [] for name in [*owners, HEAD]}
    for name, p in module.named_parameters():
        units[unit_of.get(id(p), HEAD)].append((name, p, not (name.endswith("bias") or id(p) in norms)))
    return units


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or type(m).__name__.endswith(("LayerNorm", "RMSNorm"))


def param_groups(module: nn.Module, weight_decay: float = WEIGHT_DECAY) -> list[dict]:
    """Optimizer groups: per unit, its decayed parameters and its biases/norm weights (no decay)."""
    groups = []
    for unit, params in unit_parameters(module).items():
        for decays in (True, False):
            chosen = [p for _, p, d in params if d == decays]
            if chosen:
                groups.append({"name": unit, "params": chosen, "weight_decay": weight_decay if decays else 0.0})
    return groups


class UnitAdamW(torch.optim.AdamW):
    """AdamW that leaves the groups ``set_trainable`` marked frozen entirely alone (no moment update, no step
    count, no decay)."""

    def step(self, closure=None):
        groups = self.param_groups
        self.param_groups = [g for g in groups if not g.get("frozen")]
        try:
            return super().step(closure)
        finally:
            self.param_groups = groups


def trained_units(trainable: tuple[str, ...] | None, units) -> list[str]:
    """The units a phase trains: the head always, the listed units (None: every unit)."""
    return [u for u in units if u == HEAD or trainable is None or u in trainable]


def set_trainable(module: nn.Module, optimizer: torch.optim.Optimizer, trainable: tuple[str, ...] | None,
                  lr: float) -> list[str]:
    """Freeze every unit a phase does not train (see the module docstring) and give the trained groups ``lr``;
    returns the trained unit names."""
    units = unit_parameters(module)
    on = trained_units(trainable, units)
    for unit, params in units.items():
        for _, p, _ in params:
            p.requires_grad_(unit in on)
    for group in optimizer.param_groups:
        group["frozen"] = group["name"] not in on
    set_lr(optimizer, lr)
    return on


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The learning rate of the trained groups (frozen ones keep 0)."""
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if group.get("frozen") else lr
