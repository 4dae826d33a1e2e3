"""``search``: the student architectures Ray Tune tries, the objectives and the budget."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from xdray.config.base import Section
from xdray.config.distill import StageConfig

SEARCH_DIMENSIONS = ("layers", "hidden", "heads", "ffn_ratio", "embedding_factor", "lr", "schedule")
OBJECTIVES = {"dev_accuracy": "max", "latency_ms": "min", "params": "min"}


class SearchSpace(Section):
    """The choices of each dimension; a trial takes one of each. Heads are kept valid: a trial is only offered
    the head counts that divide its hidden size."""

    layers: list[int] = Field([1, 2], min_length=1)
    """Student depths to choose from."""
    hidden: list[int] = Field([64, 128], min_length=1)
    """Hidden sizes to choose from."""
    heads: list[int] = Field([1, 2], min_length=1)
    """Head counts; a trial is only offered those that divide its hidden size."""
    ffn_ratio: list[float] = Field([4.0], min_length=1)
    """FFN width = ratio x hidden."""
    embedding_factor: list[float] = Field([1.0], min_length=1)
    """Embedding size = factor x hidden; below 1 the student has factorized (ALBERT-style) embeddings."""
    lr: list[float] | None = None
    """Learning rates to choose from; None = distill.lr."""
    schedules: dict[str, list[StageConfig]] | None = None
    """Named schedules to choose from (each a list of stages, as distill.stages); None = distill.stages."""

    @field_validator("layers", "hidden", "heads")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError(f"values must be positive integers, got {values}; fix: use integers >= 1")
        return values

    @model_validator(mode="after")
    def _every_choice_builds(self) -> SearchSpace:
        for h in self.hidden:
            if not self.heads_for(h):
                raise ValueError(f"no head count in heads={self.heads} divides hidden={h}; "
                                 f"fix: add a divisor of {h} to search.space.heads (e.g. {max(1, h // 64)})")
            for f in self.embedding_factor:
                if not 0 < f <= 1 or round(f * h) < 8:
                    raise ValueError(f"embedding_factor={f} with hidden={h} gives embedding size {round(f * h)}; "
                                     "fix: use factors in (0, 1] that keep it >= 8")
            for r in self.ffn_ratio:
                if round(r * h) < 8:
                    raise ValueError(f"ffn_ratio={r} with hidden={h} gives an FFN width below 8; fix: raise ffn_ratio")
        if self.lr is not None and (not self.lr or any(v <= 0 for v in self.lr)):
            raise ValueError(f"lr choices must be positive, got {self.lr}; fix: e.g. [1.0e-3, 3.0e-3]")
        if self.schedules is not None and not all(self.schedules.values()):
            raise ValueError("every schedule needs at least one stage; fix: remove the empty schedule")
        return self

    def heads_for(self, hidden: int) -> list[int]:
        return [a for a in self.heads if hidden % a == 0]


class LatencyConfig(Section):
    """How student latency is measured (per sentence, on dev sentences)."""

    device: Literal["cpu", "cuda"] = "cpu"
    """Where latency is measured (`cuda` reserves a GPU for the measuring task)."""
    batch_sizes: list[int] = Field([1, 32], min_length=1)
    """Each is measured and recorded (``latency_ms_b<N>``); the first is the objective ``latency_ms``."""
    threads: int = Field(1, ge=1)
    """CPU threads (and CPUs reserved for the measurement)."""
    sentences: int = Field(64, ge=1)
    """Dev sentences timed."""
    resources: dict[str, float] = {}
    """Custom Ray resources the measuring task also asks for, e.g. ``{serving_cpu: 1}`` when only some nodes
    have the hardware you serve on. Latency is always measured in a Ray task that reserves ``threads`` CPUs (and
    a GPU for cuda), never in the driver."""


class BudgetConfig(Section):
    """Limits for the chosen student: the most accurate completed trial within them is exported."""

    latency_ms: float | None = Field(None, gt=0)
    """Most ms per sentence (at the first latency batch size) for the exported student."""
    params: int | None = Field(None, ge=1)
    """Most parameters for the exported student."""


class AshaConfig(Section):
    """ASHA early stopping (single-objective search): trials are compared after each dev evaluation."""

    grace_period: int = Field(1, ge=1)
    """Dev evaluations (epochs) before a trial can be stopped."""
    reduction_factor: float = Field(2.0, gt=1)
    """ASHA's reduction factor."""
    max_t: int = Field(100, ge=1)
    """Epochs after which any trial stops; keep it above the schedule's epoch count."""


class SearchConfig(Section):
    space: SearchSpace = SearchSpace()
    objectives: list[Literal["dev_accuracy", "latency_ms", "params"]] = ["dev_accuracy", "latency_ms"]
    """``[dev_accuracy]``: single objective (ASHA can stop weak trials); with ``latency_ms`` or ``params``:
    multi-objective (Optuna), whose result is a Pareto front."""
    num_samples: int = Field(8, ge=1)
    """Trials to run."""
    sampler: Literal["tpe", "random"] = "tpe"
    """Optuna sampler (seeded with ``seed``); tpe handles one or two objectives."""
    points_to_evaluate: list[dict[str, Any]] = []
    """Trials to run first, e.g. a known-good student: mappings of dimensions (layers, hidden, heads, ffn_ratio,
    embedding_factor, lr, schedule) to values from the space; the rest are sampled."""
    asha: AshaConfig | None = None
    latency: LatencyConfig = LatencyConfig()
    budget: BudgetConfig = BudgetConfig()
    workers_per_trial: int = Field(1, ge=1)
    """Ray Train workers of each trial (with the distill settings)."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """None = as many as the cluster's CPUs (or GPUs) fit at workers_per_trial each; the rest queue."""

    @model_validator(mode="after")
    def _searchable(self) -> SearchConfig:
        obj = self.objectives
        if not obj or obj[0] != "dev_accuracy" or len(obj) > 2 or len(set(obj)) != len(obj):
            raise ValueError(f"objectives={obj}; fix: use [dev_accuracy] or [dev_accuracy, latency_ms|params]")
        if self.asha is not None and len(obj) > 1:
            raise ValueError("asha stops trials by one metric; fix: use objectives: [dev_accuracy] or remove asha")
        for point in self.points_to_evaluate:
            self._check_point(point)
        return self

    def _check_point(self, point: dict[str, Any]) -> None:
        sp = self.space
        choices = {"layers": sp.layers, "hidden": sp.hidden, "heads": sp.heads, "ffn_ratio": sp.ffn_ratio,
                   "embedding_factor": sp.embedding_factor, "lr": sp.lr, "schedule": list(sp.schedules or [])}
        for key, value in point.items():
            if key not in SEARCH_DIMENSIONS:
                raise ValueError(f"point {point}: unknown dimension {key}; fix: use {', '.join(SEARCH_DIMENSIONS)}")
            if not choices[key] or value not in choices[key]:
                raise ValueError(f"point {point}: {key}={value} is not among the space's choices {choices[key]}; "
                                 f"fix: add it to search.space.{'schedules' if key == 'schedule' else key}")
        if "heads" in point and point.get("hidden", sp.hidden[0]) % point["heads"]:
            raise ValueError(f"point {point}: heads must divide hidden; fix: choose another heads value")
        if "heads" in point and "hidden" not in point:
            raise ValueError(f"point {point}: heads depends on hidden; fix: give hidden too")
