"""The search space as Optuna sees it: a define-by-run function, so a dimension can depend on another (a trial
is only offered the head counts that divide the hidden size it drew, and invalid students are never launched).
What each sampled point becomes is ``config.space.candidate``.
"""

from __future__ import annotations

from xdray.config import SearchSpace
from xdray.config.space import heads_name


class define:  # noqa: N801 - used like a function: define(space, schedules)(trial)
    """Optuna's define-by-run function for this space (categorical dimensions). A class, not a closure: Tune
    pickles the searcher, this with it, into the experiment's state."""

    def __init__(self, space: SearchSpace, schedules: list[str]):
        self.space, self.schedules = space, schedules

    def __call__(self, trial) -> None:
        space = self.space
        trial.suggest_categorical("layers", space.layers)
        hidden = trial.suggest_categorical("hidden", space.hidden)
        trial.suggest_categorical(heads_name(hidden), space.heads_for(hidden))
        trial.suggest_categorical("ffn_ratio", space.ffn_ratio)
        trial.suggest_categorical("embedding_factor", space.embedding_factor)
        if space.lr:
            trial.suggest_categorical("lr", space.lr)
        if len(self.schedules) > 1:
            trial.suggest_categorical("schedule", self.schedules)
