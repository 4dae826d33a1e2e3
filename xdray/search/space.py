"""The search space as Optuna sees it, and the student each sampled point becomes.

Optuna samples with a define-by-run function, so a dimension can depend on another: a trial is only offered
the head counts that divide the hidden size it drew, and invalid students are never launched. Conditional
parameters need their own names (``heads@128``: Optuna refuses one name with different choices); users and
``points_to_evaluate`` speak plain dimensions, and ``to_params`` / ``candidate`` translate.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from xdray.config import SearchSpace, StageConfig, StudentConfig, XdrayConfig


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


def _heads_name(hidden: int) -> str:
    return f"heads@{hidden}"


class define:  # noqa: N801 - used like a function: define(space, schedules)(trial)
    """Optuna's define-by-run function for this space (categorical dimensions). A class, not a closure: Tune
    pickles the searcher, this with it, into the experiment's state."""

    def __init__(self, space: SearchSpace, schedules: list[str]):
        self.space, self.schedules = space, schedules

    def __call__(self, trial) -> None:
        space = self.space
        trial.suggest_categorical("layers", space.layers)
        hidden = trial.suggest_categorical("hidden", space.hidden)
        trial.suggest_categorical(_heads_name(hidden), space.heads_for(hidden))
        trial.suggest_categorical("ffn_ratio", space.ffn_ratio)
        trial.suggest_categorical("embedding_factor", space.embedding_factor)
        if space.lr:
            trial.suggest_categorical("lr", space.lr)
        if len(self.schedules) > 1:
            trial.suggest_categorical("schedule", self.schedules)


def to_params(point: dict) -> dict:
    """A user's point (plain dimensions) in Optuna's parameter names."""
    params = {k: v for k, v in point.items() if k != "heads"}
    if "heads" in point:
        params[_heads_name(point["hidden"])] = point["heads"]
    return params


def candidate(params: dict, cfg: XdrayConfig) -> Candidate:
    """The student a sampled point describes; unsampled settings (init, embeddings) come from distill.student."""
    hidden = params["hidden"]
    student = cfg.distill.student.model_copy(update={
        "layers": params["layers"], "hidden": hidden, "heads": params[_heads_name(hidden)],
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
            params = {"layers": layers, "hidden": hidden, _heads_name(hidden): heads, "ffn_ratio": ffn,
                      "embedding_factor": factor, "lr": lr, "schedule": schedule}
            out.append(candidate(params, cfg))
    return out


def stages(cfg: XdrayConfig, schedule: str) -> list[dict]:
    chosen: list[StageConfig] = cfg.search_schedules()[schedule]
    return [s.model_dump() for s in chosen]
