"""Distillation losses, each its own function (plain torch, no Ray).

Hidden-state and attention losses take lists with one tensor per matched layer; which teacher layer each
student layer is matched to is ``layer_map``'s job, and projecting narrower student states into the teacher's
width is the caller's (``objective.DistillModule``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def layer_map(student_layers: int, teacher_layers: int, mode: str = "top") -> list[int]:
    """The teacher hidden-state index (0 = embedding output) matched to each of the student's L_s+1 states.

    ``top`` (the paper): 12 → 6 maps student embeddings ↔ teacher layer 6, ..., student layer 6 ↔ teacher 12.
    ``uniform``: evenly spread, embeddings ↔ embeddings and top ↔ top.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"cannot map {student_layers} student layers onto {teacher_layers} teacher layers")
    if mode == "top":
        return [teacher_layers - student_layers + i for i in range(student_layers + 1)]
    if mode == "uniform":
        return [round(i * teacher_layers / student_layers) for i in range(student_layers + 1)]
    raise ValueError(f"unknown layer map {mode!r}")


def select_positions(states: torch.Tensor, mask: torch.Tensor, positions: str) -> torch.Tensor:
    """(B, T, H) → (B, H) [CLS] vectors for sequence tasks, or (N, H) every non-pad token for token tasks."""
    if positions == "cls":
        return states[:, 0]
    return states[mask.bool()]


def hidden_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], kind: str = "mse") -> torch.Tensor:
    """Mean over matched layers of MSE (or 1 - cosine) between (N, H_t) student and teacher states."""
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student states for {len(teacher)} teacher states")
    per_layer = []
    for s, t in zip(student, teacher):
        s, t = s.float(), t.float()
        if kind == "mse":
            per_layer.append(F.mse_loss(s, t))
        elif kind == "cosine":
            per_layer.append((1 - F.cosine_similarity(s, t, dim=-1)).mean())
        else:
            raise ValueError(f"unknown hidden loss {kind!r}")
    return torch.stack(per_layer).mean()


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) token mask → (B, T, T) mask of (query, key) pairs that are both real tokens."""
    m = mask.float()
    return m[:, :, None] * m[:, None, :]


def attention_mse(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """MSE between head-averaged attention maps (B, heads, T, T), so any head counts compare; padding masked."""
    pairs = _pair_mask(mask)
    per_layer = []
    for s, t in zip(student, teacher, strict=True):
        diff = (s.float().mean(1) - t.float().mean(1)) ** 2
        per_layer.append((diff * pairs).sum() / pairs.sum().clamp_min(1))
    return torch.stack(per_layer).mean()


def _log_relation(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax(H Hᵀ / sqrt(d)) over real keys: a (B, T, T) distribution that ignores the width."""
    states = states.float()
    scores = states @ states.transpose(1, 2) / math.sqrt(states.shape[-1])
    scores = scores.masked_fill(~mask.bool()[:, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def relation_kl(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Self-relations of (B, T, H) hidden states: KL(teacher ‖ student) of softmax(H Hᵀ/√d) maps, averaged over
    real query tokens; widths and head counts may differ freely. A cousin of MiniLM's relations on the hidden
    states; MiniLMv2's query/key/value relations are ``qkv_relations``."""
    queries = mask.bool()
    per_layer = []
    for s, t in zip(student, teacher, strict=True):
        log_s, log_t = _log_relation(s, mask), _log_relation(t, mask)
        kl = (log_t.exp() * (log_t - log_s)).masked_fill(~queries[:, None, :], 0).sum(-1)
        per_layer.append(kl[queries].mean())
    return torch.stack(per_layer).mean()


def _relation_heads(x: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, H) → (B, heads, T, T) log softmax of scaled dot-product self-relations per relation head, over
    real keys."""
    b, t, h = x.shape
    if h % heads:
        raise ValueError(f"{h} hidden units do not split into {heads} relation heads")
    x = x.float().view(b, t, heads, h // heads).transpose(1, 2)
    scores = x @ x.transpose(-1, -2) / math.sqrt(h // heads)
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def qkv_relations(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor,
                  heads: int) -> torch.Tensor:
    """MiniLMv2 (Wang et al. 2021): the queries, keys and values of one student layer and one teacher layer,
    each (B, T, H) and split into the same number of relation heads whatever the models' own head counts and
    widths; for Q-Q, K-K and V-V, KL(teacher ‖ student) of the per-head scaled dot-product relations, averaged
    over relation heads and real query tokens; the three are summed."""
    queries = mask.bool()[:, None, :]
    per_kind = []
    for s, t in zip(student, teacher, strict=True):
        log_s, log_t = _relation_heads(s, mask, heads), _relation_heads(t, mask, heads)
        kl = (log_t.exp() * (log_t - log_s)).masked_fill(~mask.bool()[:, None, None, :], 0).sum(-1)  # (B, R, T)
        per_kind.append(kl.masked_select(queries.expand_as(kl)).mean())
    return torch.stack(per_kind).sum()


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
    """Cross-entropy on hard labels; for token tasks (B, T, C) logits, labels of -100 (padding, special
    tokens) are left out."""
    return F.cross_entropy(student.float().reshape(-1, student.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def label_mse(student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Regression on a float target (STS-B style): MSE between the single output and the label."""
    return F.mse_loss(student.float().reshape(-1), targets.float().reshape(-1))


# ---------------------------------------------------------------------------------------------------------
# Per-token and span targets: only the entries the labelled Parquet stored (``mask``) take part


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over the stored entries only: per-token label logits (B, T, C), or QA start/end logits (B, T)."""
    diff = (student.float() - teacher.float()) ** 2
    return diff[mask].mean() if mask.any() else diff.sum() * 0


def masked_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0,
              rest: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) of softmaxes over the last axis, restricted to the stored entries, averaged over
    the rows (tokens, or windows for QA's positions) that store any, × T².

    ``rest``: the teacher's log-sum-exp over all labels (B, T), stored with top-k logits. The labels not stored
    then form one more bucket on both sides, the teacher's mass there being 1 − Σ stored; exact at T = 1."""
    t, low = temperature, torch.finfo(torch.float32).min
    s, te = student.float(), teacher.float()
    if rest is not None:
        stored = torch.logsumexp(te.masked_fill(~mask, low), -1)
        rest_t = rest.float() + torch.log1p(-torch.exp(stored - rest.float()).clamp(max=1 - 1e-6))
        rest_s = torch.logsumexp(s.masked_fill(mask, low), -1)
        s, te = torch.cat([s, rest_s[..., None]], -1), torch.cat([te, rest_t[..., None]], -1)
        mask = torch.cat([mask, mask.any(-1, keepdim=True)], -1)
    log_s = F.log_softmax((s / t).masked_fill(~mask, low), -1)
    log_t = F.log_softmax((te / t).masked_fill(~mask, low), -1)
    kl = (log_t.exp() * (log_t - log_s)).masked_fill(~mask, 0).sum(-1)
    rows = mask.any(-1)
    return kl[rows].mean() * t * t if rows.any() else kl.sum() * 0


def span_kd(student: torch.Tensor, start: torch.Tensor, end: torch.Tensor, mask: torch.Tensor, kind: str,
            temperature: float = 1.0) -> torch.Tensor:
    """QA distillation: the student's (B, T, 2) start and end scores against the teacher's start and end logits
    over each window's tokens (``mask``): the mean of the two distributions' KL-T (``logits_kl``) or MSEs."""
    parts = [masked_mse(student[..., i], t, mask) if kind == "logits_mse" else
             masked_kl(student[..., i], t, mask, temperature) for i, t in enumerate((start, end))]
    return (parts[0] + parts[1]) / 2


def span_ce(start: torch.Tensor, end: torch.Tensor, start_positions: torch.Tensor, end_positions: torch.Tensor,
            mask: torch.Tensor) -> torch.Tensor:
    """Extractive QA on labelled windows: the mean of the start and end cross-entropies over each window's real
    tokens (a window without the answer points at position 0, [CLS], as Hugging Face's QA heads are trained)."""
    low = torch.finfo(torch.float32).min
    losses = [F.cross_entropy(x.float().masked_fill(~mask.bool(), low), y)
              for x, y in ((start, start_positions), (end, end_positions))]
    return (losses[0] + losses[1]) / 2
