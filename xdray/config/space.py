"""The search space's points as students: what a sampled point builds and trains (``candidate``) and the whole
space enumerated (``every_candidate``), which the config validates up front. Conditional dimensions need their
own names in Optuna (``heads@128``); users and ``points_to_evaluate`` speak plain dimensions, and ``to_params`` /
``candidate`` translate. ``search.space`` holds the sampler's side.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xdray.config.distill import StageConfig, StudentConfig

if TYPE_CHECKING:
    from xdray.config import XdrayConfig


@dataclass(frozen=True)
class Candidate:
    """One point of the space: the student to build and how to train it."""

    student: StudentConfig
    lr: float
    schedule: str

    @property
    def name(self) -> str:
        s = self.student
        name = f"L{s.layers}-H{s.hidden}-A{s.heads}-F{s.intermediate}"
        return name + (f"-E{s.embedding_size}" if s.factorized else "")

    @property
    def key(self) -> str:
        """Identifies the training run: two trials with the same key train the same student the same way."""
        plain = {"student": self.student.model_dump(mode="json"), "lr": self.lr, "schedule": self.schedule}
        return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        s = self.student
        return {"arch": self.name, "layers": s.layers, "hidden": s.hidden, "heads": s.heads,
                "intermediate": s.intermediate, "embedding_size": s.embedding_width, "lr": self.lr,
                "schedule": self.schedule}


def heads_name(hidden: int) -> str:
    return f"heads@{hidden}"


def to_params(point: dict) -> dict:
    """A user's point (plain dimensions) in Optuna's parameter names."""
    params = {k: v for k, v in point.items() if k != "heads"}
    if "heads" in point:
        params[heads_name(point["hidden"])] = point["heads"]
    return params


def candidate(params: dict, cfg: XdrayConfig) -> Candidate:
    """The student a sampled point describes; unsampled settings (init, embeddings) come from distill.student."""
    hidden = params["hidden"]
    student = cfg.distill.student.model_copy(update={
        "layers": params["layers"], "hidden": hidden, "heads": params[heads_name(hidden)],
        "intermediate": round(params["ffn_ratio"] * hidden),
        "embedding_size": round(params["embedding_factor"] * hidden), "init_layers": None,
    })
    schedule = params.get("schedule", next(iter(cfg.search_schedules())))
    return Candidate(StudentConfig.model_validate(student.model_dump()), params.get("lr", cfg.distill.lr), schedule)


def every_candidate(cfg: XdrayConfig) -> list[Candidate]:
    """The whole space, enumerated (checked against the teacher before the first trial starts)."""
    sp = cfg.search.space
    out = []
    for layers, hidden, ffn, factor, lr, schedule in itertools.product(
        sp.layers, sp.hidden, sp.ffn_ratio, sp.embedding_factor, sp.lr or [cfg.distill.lr], cfg.search_schedules()
    ):
        for heads in sp.heads_for(hidden):
            params = {"layers": layers, "hidden": hidden, heads_name(hidden): heads, "ffn_ratio": ffn,
                      "embedding_factor": factor, "lr": lr, "schedule": schedule}
            out.append(candidate(params, cfg))
    return out


def stages(cfg: XdrayConfig, schedule: str) -> list[dict]:
    chosen: list[StageConfig] = cfg.search_schedules()[schedule]
    return [s.model_dump() for s in chosen]
