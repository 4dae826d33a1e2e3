"""Distillation losses, each its own function (plain torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logits_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE on raw logits, as the reference implementation does (no temperature)."""
    return F.mse_loss(student.float(), teacher.float())


def logits_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T² (Hinton et al.)."""
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def hard_label_ce(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student.float(), labels)


def stage_loss(
    loss: str, logits: torch.Tensor, batch: dict[str, torch.Tensor], temperature: float = 1.0
) -> torch.Tensor:
    """The loss a stage asks for, from the student's logits and the batch's targets."""
    if loss == "logits_mse":
        return logits_mse(logits, batch["teacher_logits"])
    if loss == "logits_kl":
        return logits_kl(logits, batch["teacher_logits"], temperature)
    if loss == "ce":
        return hard_label_ce(logits, batch["labels"])
    raise ValueError(f"unknown loss {loss!r}")
