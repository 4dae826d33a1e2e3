"""Config validation: every bad input is refused before Ray starts, with one line naming the key and the fix."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xdray.checks import STEPS, check_inputs
from xdray.config import ConfigError, load_config, validate_config

from .conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw(tiny_task, tmp_path) -> dict:
    return tiny_config(tiny_task, tmp_path / "out")


def test_valid_config_resolves_paths(raw, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    raw["output_dir"] = "relative/out"
    cfg = validate_config(raw)
    assert cfg.output_dir == (tmp_path / "relative/out").resolve()
    assert cfg.teacher_dir == cfg.output_dir / "teacher" / "model"
    assert cfg.labels_dir == cfg.output_dir / "label" / "data"
    assert cfg.distill.deepspeed.zero_stage == "auto" and cfg.distill.workers == 2 and cfg.distill.zero_stage == 2
    one = _set(copy.deepcopy(raw), "distill.workers", 1)
    assert validate_config(one).distill.zero_stage == 0  # one worker without offload: nothing to partition
    offload = _set(copy.deepcopy(one), "distill.deepspeed.offload_optimizer", True)
    assert validate_config(offload).distill.zero_stage == 2
    assert validate_config(_set(one, "distill.deepspeed.zero_stage", 3)).distill.zero_stage == 3


def _set(raw: dict, dotted: str, value) -> dict:
    node = raw
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return raw


BAD = [
    # (key to set, value, text the one-line error must contain)
    ("distill.studnet", {"layers": 2}, "distill.studnet: unknown key"),
    ("distill.student.hidden", 33, "hidden=33 is not divisible by heads=2"),
    ("distill.workers", "two", "distill.workers: Input should be a valid integer"),
    ("distill.deepspeed.zero_stage", 4, "distill.deepspeed.zero_stage: Input should be 'auto', 0, 1, 2 or 3"),
    ("distill.deepspeed.precision", "fp16", "fp16 is not supported on CPU"),
    ("distill.deepspeed.train_batch_size", 48, "train_batch_size=48 is not divisible by batch_size x workers = "
     "16 x 2 = 32; fix: use a multiple of 32"),
    ("distill.deepspeed.offload_optimizer", True, "offload_optimizer needs ZeRO"),  # with zero_stage 0, below
    ("search.workers_per_trial", 3, "search.workers_per_trial=3: train_batch_size=64 is not divisible by"),
    ("distill.batch_size", 0, "distill.batch_size: Input should be greater than or equal to 1"),
    ("distill.stages", [], "distill.stages: List should have at least 1 item"),
    ("distill.stages", [{"name": "a", "data": "train", "loss": "logits_mse"}], "needs teacher outputs"),
    ("distill.stages", [{"name": "a", "data": "transfer", "loss": "attention"}], "fix: set distill.teacher_mode: online"),
    ("distill.stages", [{"name": "a", "data": "transfer", "loss": "relations"}], "queries, keys and values"),
    ("distill.stages", [{"name": "a", "data": "transfer", "loss": []}], "no loss"),
    ("distill.student", {"hidden": 32, "heads": 2, "init": "copy-me"}, "init='copy-me' is not known"),
    ("distill.student", {"hidden": 32, "heads": 2, "embedding_size": 16, "init": "teacher-layers"},
     "needs embedding_size == hidden"),
    ("distill.student", {"hidden": 32, "heads": 2, "embeddings": "copy"}, "embeddings=copy needs an init source"),
    ("distill.student", {"layers": 2, "hidden": 32, "heads": 2, "init": "teacher-layers", "init_layers": [1]},
     "one source index per student layer"),
    ("distill.stages", [{"name": "a", "data": "transfer", "loss": "ce"}], "transfer set has no labels"),
    ("distill.stages", [{"name": "a", "data": "corpus", "loss": "ce"}], "distill.stages.0.data: Input should be"),
    (
        "distill.stages",
        [{"name": "x", "data": "train", "loss": "ce"}, {"name": "x", "data": "train", "loss": "ce"}],
        "stage names must be unique",
    ),
    ("search.space.hidden", [15], "no head count in heads=[2] divides hidden=15"),
    ("search.space.layers", [], "search.space.layers: List should have at least 1 item"),
    ("search.space.embedding_factor", [0.25], "embedding_factor=0.25 with hidden=16 gives embedding size 4"),
    ("search.objectives", ["latency_ms"], "fix: use [dev_accuracy] or [dev_accuracy, latency_ms|params]"),
    ("search.asha", {"grace_period": 1}, "asha stops trials by one metric"),
    ("search.points_to_evaluate", [{"layers": 3}], "layers=3 is not among the space's choices [1, 2]"),
    ("search.points_to_evaluate", [{"depth": 1}], "unknown dimension depth"),
    ("search.space.embedding_factor", [0.5], "search.space with distill.student gives an invalid student: "
     "init=teacher-layers copies BERT blocks, which needs embedding_size == hidden"),
    ("label.cpus_per_actor", 0, "label.cpus_per_actor: Input should be greater than 0"),
    ("data.max_length", 2, "data.max_length: Input should be greater than or equal to 8"),
]


@pytest.mark.parametrize("key,value,expected", BAD, ids=[b[0] + "=" + str(b[1])[:20] for b in BAD])
def test_bad_configs_each_give_one_clear_line(raw, key, value, expected):
    if key == "search.space.embedding_factor" and value == [0.5]:
        raw["distill"]["student"]["init"] = "teacher-layers"
    if key == "distill.deepspeed.offload_optimizer":
        raw["distill"]["deepspeed"] = {"zero_stage": 0}
    if key == "search.workers_per_trial":
        raw["distill"]["deepspeed"] = {"train_batch_size": 64}
    with pytest.raises(ConfigError) as err:
        validate_config(_set(raw, key, value))
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_missing_required_key(raw):
    del raw["teacher"]
    with pytest.raises(ConfigError, match=r"^teacher: required key is missing; fix:"):
        validate_config(raw)


def test_missing_input_files_are_refused_before_ray(raw, tmp_path):
    raw["data"]["train"] = str(tmp_path / "nope.tsv")
    cfg = validate_config(raw)
    with pytest.raises(ConfigError, match=r"data.train: not found: .*nope.tsv; fix: run `xdray data samples`"):
        check_inputs(cfg, STEPS)


def test_later_steps_need_earlier_outputs(raw):
    cfg = validate_config(raw)
    check_inputs(cfg, STEPS)  # the pipeline produces them itself
    with pytest.raises(ConfigError, match=r"label.teacher: not found: .*; fix: run `xdray teacher` first"):
        check_inputs(cfg, ("label",))


def test_overrides_parse_yaml_values(tmp_path, raw):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path, ["distill.workers=1", "distill.student.embeddings=random", "distill.stages.0.epochs=3"])
    assert cfg.distill.workers == 1
    assert cfg.distill.student.embeddings == "random"
    assert cfg.distill.stages[0].epochs == 3
    with pytest.raises(ConfigError, match="bad override 'distill.workers'"):
        load_config(path, ["distill.workers"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(bad)


@pytest.mark.parametrize("job", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_spec_validates(job, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(job)
    assert cfg.output_dir.is_absolute()


def test_cli_bad_config_exits_nonzero_with_one_line(tmp_path, raw):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "xdray.cli", "distill", str(path), "--set", "distill.student.heads=3"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "xdray distill: error: distill.student: hidden=16 is not divisible by heads=3; "
        "fix: choose heads that divide hidden (e.g. hidden/64)"
    ]
    assert not (tmp_path / "out").exists()  # refused before any work


def test_an_output_dir_that_is_a_file_is_one_line_and_exit_2(tmp_path, raw):
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**raw, "output_dir": str(taken)}))
    proc = subprocess.run([sys.executable, "-m", "xdray.cli", "label", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"xdray label: error: output_dir: {taken} is a file, not a directory; fix: point output_dir at a directory "
        "(it is created if missing)"]
    assert taken.read_text() == "keep me\n"
