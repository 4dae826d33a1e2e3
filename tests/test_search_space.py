"""The search's pure parts, without Ray: the space Optuna samples, the Pareto front, the budget choice."""

from __future__ import annotations

import optuna
import pytest

from tests.conftest import tiny_config
from xdray.config import BudgetConfig, validate_config
from xdray.config.space import candidate, every_candidate, stages, to_params
from xdray.search.pareto import choose, dominates, pareto_front
from xdray.search.space import define


@pytest.fixture
def cfg(tiny_task, tmp_path):
    raw = tiny_config(tiny_task, tmp_path / "out", search={
        "space": {"layers": [1, 2], "hidden": [64, 96], "heads": [3, 4], "ffn_ratio": [2, 4],
                  "embedding_factor": [0.5, 1.0], "lr": [1e-3, 3e-3]},
        "points_to_evaluate": [{"layers": 2, "hidden": 96, "heads": 3, "embedding_factor": 0.5}],
    })
    return validate_config(raw)


def test_sampled_students_are_always_valid_and_cover_the_space(cfg):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), directions=["maximize", "minimize"])
    sample = define(cfg.search.space, ["distill"])
    seen = set()
    for _ in range(200):
        trial = study.ask()
        sample(trial)
        c = candidate(trial.params, cfg)
        assert c.student.hidden % c.student.heads == 0  # 64 is only offered 4 heads, 96 both 3 and 4
        seen.add((c.student.hidden, c.student.heads, c.student.factorized, c.student.intermediate, c.lr))
        study.tell(trial, [0.5, 1.0])
    assert {(h, a) for h, a, *_ in seen} == {(64, 4), (96, 3), (96, 4)}
    assert {f for _, _, f, *_ in seen} == {True, False} and {i for *_, i, _ in seen} == {128, 256, 192, 384}
    assert len(every_candidate(cfg)) == 2 * 3 * 2 * 2 * 2  # layers x (hidden, heads) x ffn x embedding x lr


def test_a_point_to_evaluate_becomes_the_student_it_names(cfg):
    point = cfg.search.points_to_evaluate[0]
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(to_params(point))
    trial = study.ask()
    define(cfg.search.space, ["distill"])(trial)
    c = candidate(trial.params, cfg)
    s = c.student
    assert (s.layers, s.hidden, s.heads, s.embedding_size, s.factorized) == (2, 96, 3, 48, True)
    assert c.name.startswith("L2-H96-A3-F") and c.name.endswith("-E48")
    other_lr = 1e-3 if trial.params["lr"] == 3e-3 else 3e-3  # the sampler picked one of the two
    assert c.key == candidate(dict(trial.params), cfg).key != candidate({**trial.params, "lr": other_lr}, cfg).key


POINTS = [  # (accuracy, latency): b, c, e are on the front; a is dominated by b; d by c (equal latency, lower acc)
    {"id": "a", "dev_accuracy": 0.80, "latency_ms": 2.0, "params": 10},
    {"id": "b", "dev_accuracy": 0.85, "latency_ms": 1.5, "params": 20},
    {"id": "c", "dev_accuracy": 0.90, "latency_ms": 3.0, "params": 30},
    {"id": "d", "dev_accuracy": 0.88, "latency_ms": 3.0, "params": 5},
    {"id": "e", "dev_accuracy": 0.70, "latency_ms": 0.5, "params": 40},
]


def test_pareto_front_of_known_points():
    front = pareto_front(POINTS, ["dev_accuracy", "latency_ms"])
    assert [p["id"] for p in front] == ["e", "b", "c"]  # by latency
    assert dominates(POINTS[1], POINTS[0], ["dev_accuracy", "latency_ms"])
    assert not dominates(POINTS[0], POINTS[0], ["dev_accuracy", "latency_ms"])  # equal is not better
    assert [p["id"] for p in pareto_front(POINTS, ["dev_accuracy", "params"])] == ["d", "c"]
    assert [p["id"] for p in pareto_front(POINTS, ["dev_accuracy"])] == ["c"]


def test_the_chosen_student_is_the_most_accurate_within_the_budget():
    assert choose(POINTS, BudgetConfig())["id"] == "c"
    assert choose(POINTS, BudgetConfig(latency_ms=2.0))["id"] == "b"
    assert choose(POINTS, BudgetConfig(latency_ms=3.0, params=10))["id"] == "d"
    assert choose(POINTS, BudgetConfig(latency_ms=0.1)) is None


def test_the_schedule_is_a_dimension_and_a_trial_runs_the_one_it_drew(tiny_task, tmp_path):
    logits_only = [{"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": 2}]
    paper = [{"name": "hidden", "data": "transfer", "loss": "hidden", "epochs": 1}, *logits_only]
    cfg = validate_config(tiny_config(tiny_task, tmp_path / "out", search={
        "space": {"layers": [1], "hidden": [16], "heads": [2], "schedules": {"kd": logits_only, "paper": paper}},
        "points_to_evaluate": [],
    }))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), directions=["maximize", "minimize"])
    drawn = set()
    for _ in range(20):
        trial = study.ask()
        define(cfg.search.space, list(cfg.search_schedules()))(trial)
        c = candidate(trial.params, cfg)
        assert [s["name"] for s in stages(cfg, c.schedule)] == {"kd": ["logits"], "paper": ["hidden", "logits"]}[c.schedule]
        drawn.add(c.schedule)
        study.tell(trial, [0.5, 1.0])
    assert drawn == {"kd", "paper"}
    both = every_candidate(cfg)
    assert sorted(c.schedule for c in both) == ["kd", "paper"] and len({c.key for c in both}) == 2
    assert cfg.uses_hidden  # the labelling step stores the [CLS] states the paper schedule needs


def test_a_trial_at_the_majority_rate_counts_as_chance():
    from xdray.search.run import at_chance

    balanced = [0, 1] * 504  # the demo's dev split: 1,008 rows
    assert at_chance(0.514, balanced)  # the demo's diverged trial (CE stuck at ln 2)
    assert not at_chance(0.80, balanced)
    assert at_chance(0.60, [0, 1] * 30)  # 60 rows cannot tell 60% from chance
    assert not at_chance(0.80, [0, 1] * 30)
    skewed = [0] * 90 + [1] * 10
    assert at_chance(0.90, skewed) and not at_chance(0.99, skewed)  # always "0" is already 90%
