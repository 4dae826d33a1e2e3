"""What a stage optimises: the student's outputs against the teacher's targets, summed over the stage's losses.

``DistillModule`` is what the optimizer (or DeepSpeed engine) trains: the student plus one projection per
matched hidden state when the student is narrower than the teacher. ``Objective`` turns a forward pass and a
batch (inputs, teacher targets, labels) into named loss components. ``teacher_targets`` computes the targets
with a frozen teacher, for the ``online`` mode; offline they come from the labelled Parquet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from xdray.common.hf import head_logits
from xdray.distill import losses as L
from xdray.distill.architectures import encoder_blocks
from xdray.distill.batches import model_inputs

QKV_NAMES = (("query", "key", "value"), ("q", "k", "v"), ("q_lin", "k_lin", "v_lin"),
             ("query_proj", "key_proj", "value_proj"), ("q_proj", "k_proj", "v_proj"))
"""How encoders name their attention projections: BERT, RoBERTa, XLM-R, ELECTRA, ALBERT; MPNet; DistilBERT;
DeBERTa; others."""


def qkv_projections(block: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """A transformer block's query, key and value projections."""
    linears = {name.rsplit(".", 1)[-1]: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
    for names in QKV_NAMES:
        if all(n in linears for n in names):
            return tuple(linears[n] for n in names)
    raise ValueError(f"{type(block).__name__}: no query/key/value projections found (looked for {QKV_NAMES}); "
                     "the relations loss needs separate ones")


@contextmanager
def captured_qkv(block: nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """The block's query, key and value projections' outputs (B, T, H) during the forward passes inside."""
    out: list[torch.Tensor | None] = [None, None, None]

    def keep(i):
        def hook(module, inputs, output):
            out[i] = output
        return hook

    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(qkv_projections(block))]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


class DistillModule(nn.Module):
    """The student plus per-layer projections (dropout → linear into the teacher's width) when H_s ≠ H_t.
    ``id_map`` (teacher id → student id) lets a student with a pruned vocabulary read the teacher's ids."""

    def __init__(self, student: nn.Module, teacher_hidden: int | None, states: int, dropout: float = 0.1,
                 id_map: torch.Tensor | None = None):
        super().__init__()
        self.student = student
        self.register_buffer("id_map", id_map, persistent=False)
        width = student.config.hidden_size
        self.projections = None
        if teacher_hidden and teacher_hidden != width:
            self.projections = nn.ModuleList(
                nn.Sequential(nn.Dropout(dropout), nn.Linear(width, teacher_hidden)) for _ in range(states)
            )

    def forward(self, input_ids, attention_mask, token_type_ids=None, positions: str | None = None,
                attentions: bool = False, tokens: bool = False, qkv: bool = False) -> dict:
        """Logits always; ``positions`` adds the projected states at those positions; ``tokens`` the raw
        (B, T, H) states; ``attentions`` the attention maps; ``qkv`` the top block's queries, keys, values."""
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}  # not every encoder has them
        if self.id_map is not None:
            input_ids = self.id_map[input_ids]
        with captured_qkv(encoder_blocks(self.student)[-1]) if qkv else nullcontext() as top:
            out = self.student(
                input_ids=input_ids, attention_mask=attention_mask, **types,
                output_hidden_states=bool(positions or tokens), output_attentions=attentions,
            )
        result = {"logits": head_logits(out)}
        if qkv:
            result["qkv"] = list(top)
        if positions:
            states = [L.select_positions(h, attention_mask, positions) for h in out.hidden_states]
            if self.projections is not None:
                states = [p(s) for p, s in zip(self.projections, states)]
            result["hidden"] = states
        if tokens:
            result["tokens"] = list(out.hidden_states)
        if attentions:
            result["attentions"] = list(out.attentions)
        return result


@dataclass(frozen=True)
class Objective:
    """The losses of one stage and how representations are matched."""

    losses: tuple[str, ...]
    layer_map: tuple[int, ...] = ()
    """Teacher hidden-state index for each student state (embedding output first)."""
    positions: str = "cls"
    hidden_kind: str = "mse"
    attention: str = "mean_heads"
    temperature: float = 1.0
    relation_heads: int = 12
    relation_layer: int | None = None
    """The teacher layer (1-based) whose query/key/value relations the student's top layer learns; None: the
    teacher's last (MiniLMv2 takes an upper-middle one for large teachers)."""

    @property
    def teacher_hidden_layers(self) -> tuple[int, ...]:
        return self.layer_map if "hidden" in self.losses else ()

    @property
    def relation(self) -> bool:
        return "attention" in self.losses and self.attention == "relation"

    @property
    def attention_maps(self) -> bool:
        return "attention" in self.losses and self.attention == "mean_heads"

    def forward_kwargs(self) -> dict:
        return {
            "positions": self.positions if "hidden" in self.losses else None,
            "attentions": self.attention_maps, "tokens": self.relation, "qkv": "relations" in self.losses,
        }

    def __call__(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Named components and their sum, ``total``."""
        parts = {}
        for name in self.losses:
            if name == "hidden":
                teacher = [batch["teacher_hidden"][k] for k in self.layer_map]
                parts[name] = L.hidden_loss(out["hidden"], teacher, self.hidden_kind)
            elif name == "attention" and self.relation:
                teacher = [batch["teacher_tokens"][k] for k in self.layer_map[1:]]
                parts[name] = L.relation_kl(out["tokens"][1:], teacher, batch["attention_mask"])
            elif name == "attention":
                teacher = [batch["teacher_attentions"][k - 1] for k in self.layer_map[1:]]
                parts[name] = L.attention_mse(out["attentions"], teacher, batch["attention_mask"])
            elif name == "relations":
                parts[name] = L.qkv_relations(out["qkv"], batch["teacher_qkv"], batch["attention_mask"],
                                              self.relation_heads)
            elif name in ("logits_mse", "logits_kl") and "teacher_start_logits" in batch:  # extractive QA
                parts[name] = L.span_kd(out["logits"], batch["teacher_start_logits"], batch["teacher_end_logits"],
                                        batch["teacher_span_mask"], name, self.temperature)
            elif name in ("logits_mse", "logits_kl") and "teacher_token_logits" in batch:  # a token task
                s, t, m = out["logits"], batch["teacher_token_logits"], batch["teacher_token_mask"]
                parts[name] = L.masked_mse(s, t, m) if name == "logits_mse" else L.masked_kl(
                    s, t, m, self.temperature, batch.get("teacher_token_lse"))
            elif name == "logits_mse":
                parts[name] = L.logits_mse(out["logits"], batch["teacher_logits"])
            elif name == "logits_kl":
                parts[name] = L.logits_kl(out["logits"], batch["teacher_logits"], self.temperature)
            elif name == "ce":
                parts[name] = L.hard_label_ce(out["logits"], batch["labels"])
            elif name == "span_ce":  # extractive QA: labels are each window's answer start and end
                logits, labels = out["logits"], batch["labels"]
                parts[name] = L.span_ce(logits[..., 0], logits[..., 1], labels[:, 0], labels[:, 1],
                                        batch["attention_mask"])
            elif name == "label_mse":
                parts[name] = L.label_mse(out["logits"], batch["labels"])
            else:
                raise ValueError(f"unknown loss {name!r}")
        parts["total"] = torch.stack(list(parts.values())).sum()
        return parts


@torch.no_grad()
def teacher_targets(teacher: nn.Module, batch: dict, objective: Objective) -> dict:
    """The frozen teacher's outputs that ``objective`` needs, for the batch's inputs (online mode)."""
    relations = "relations" in objective.losses
    if relations:
        blocks = encoder_blocks(teacher)
        block = blocks[(objective.relation_layer or len(blocks)) - 1]
    with captured_qkv(block) if relations else nullcontext() as qkv:
        out = teacher(
            **model_inputs(batch),
            output_hidden_states=bool(objective.teacher_hidden_layers) or objective.relation,
            output_attentions=objective.attention_maps,
        )
    mask = batch["attention_mask"]
    if getattr(out, "start_logits", None) is not None:  # a QA teacher: start and end scores of every real token
        targets = {"teacher_start_logits": out.start_logits.float(), "teacher_end_logits": out.end_logits.float(),
                   "teacher_span_mask": mask.bool()}
    elif out.logits.dim() == 3:  # a token teacher: logits for every real token
        logits = out.logits.float()
        targets = {"teacher_token_logits": logits, "teacher_token_mask": mask.bool()[..., None].expand_as(logits)}
    else:
        targets = {"teacher_logits": out.logits.float()}
    if relations:
        targets["teacher_qkv"] = [x.float() for x in qkv]
    if objective.teacher_hidden_layers:
        targets["teacher_hidden"] = {
            k: L.select_positions(out.hidden_states[k], mask, objective.positions).float()
            for k in objective.teacher_hidden_layers
        }
    if objective.relation:
        targets["teacher_tokens"] = {k: out.hidden_states[k].float() for k in objective.layer_map[1:]}
    if objective.attention_maps:
        targets["teacher_attentions"] = {k - 1: out.attentions[k - 1].float() for k in objective.layer_map[1:]}
    return targets
