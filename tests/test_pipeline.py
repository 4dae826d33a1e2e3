"""End to end: `xdray pipeline` on the tiny task with a real local Ray, real DeepSpeed engines and a real
MLflow store. Then a rerun skips every completed step."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from xdray.cli import main

from .conftest import tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_run(tiny_task, ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_config(tiny_task, root / "out")))
    assert main(["pipeline", str(job)]) == 0
    return job, root / "out"


def test_labels_have_one_row_per_unique_id(pipeline_run, tiny_task):
    _, out = pipeline_run
    table = pq.read_table(out / "label" / "data")
    ids = table.column("id").to_pylist()
    lines = {line.strip() for line in tiny_task["transfer"].read_text().splitlines() if line.strip()}
    assert len(ids) == len(set(ids)) == len(lines)
    assert table.schema.field("logits").type.value_type.bit_width == 32
    manifest = json.loads((out / "label" / "data" / "_manifest.json").read_text())
    assert manifest["rows"] == len(ids) and manifest["teacher"] == str(out / "teacher" / "model")
    summary = json.loads((out / "label" / "summary.json").read_text())
    assert summary["cleaning"]["empty"] == 2 and summary["cleaning"]["duplicates"] > 0


def test_student_loads_with_auto_classes_and_was_trained_with_deepspeed(pipeline_run):
    _, out = pipeline_run
    student_dir = out / "distill" / "student"
    assert (student_dir / "model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(student_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (1, 16)
    with torch.no_grad():
        logits = model(**tokenizer(["a great film"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)
    summary = json.loads((out / "distill" / "summary.json").read_text())
    assert summary["workers"] == 2
    assert [h["stage"] for h in summary["history"]] == ["logits"] * 5 + ["labels"]
    # the tiny task is easy: a student that learned nothing would sit at 50%
    assert summary["test_accuracy"] > 0.7
    assert json.loads((out / "teacher" / "summary.json").read_text())["test_accuracy"] > 0.7


def test_search_ran_every_architecture_on_the_same_parquet(pipeline_run):
    _, out = pipeline_run
    summary = json.loads((out / "search" / "summary.json").read_text())
    assert sorted(t["arch"] for t in summary["trials"]) == ["L1-H16-A2", "L2-H16-A2"]
    assert summary["teacher_forwards"] == 0
    best = AutoModelForSequenceClassification.from_pretrained(out / "search" / "best_student")
    assert best.config.num_hidden_layers == {"L1-H16-A2": 1, "L2-H16-A2": 2}[summary["best"]["arch"]]


def test_mlflow_holds_parent_child_and_trial_runs(pipeline_run):
    _, out = pipeline_run
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xdray-test")
    runs = client.search_runs([exp.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    parent = by_name["pipeline"]
    for step in ("teacher", "label", "distill", "search"):
        assert by_name[step].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert by_name[step].info.status == "FINISHED"
    trials = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(trials) == 2
    assert all(t.data.tags["mlflow.parentRunId"] == by_name["search"].info.run_id for t in trials)
    assert 0 < by_name["distill"].data.metrics["test_accuracy"] <= 1
    assert "dev/logits/accuracy" in by_name["distill"].data.metrics  # logged by Ray Train rank 0
    assert by_name["label"].data.metrics["rows"] > 0
    assert parent.data.metrics["speedup"] > 0
    for step in ("teacher", "label", "distill", "search"):
        logged = {a.path for a in client.list_artifacts(by_name[step].info.run_id)}
        assert "summary.json" in logged, (step, logged)
    summary = json.loads((out / "pipeline" / "summary.json").read_text())
    assert summary["mlflow_run_id"] == parent.info.run_id


def test_rerun_skips_completed_steps(pipeline_run, capsys):
    job, out = pipeline_run
    before = {s: (out / s / "summary.json").stat().st_mtime_ns for s in ("teacher", "label", "distill", "search")}
    assert main(["pipeline", str(job)]) == 0
    captured = capsys.readouterr().out
    for step, mtime in before.items():
        assert f"[xdray] {step}: complete, skipping" in captured
        assert (out / step / "summary.json").stat().st_mtime_ns == mtime
    summary = json.loads((out / "pipeline" / "summary.json").read_text())
    assert summary["ran"] == [] and summary["skipped"] == ["teacher", "label", "distill", "search"]


def test_a_single_command_redoes_its_step(pipeline_run):
    """`xdray distill` asked for explicitly runs again, over the Ray Train run directory of the last one."""
    job, out = pipeline_run
    before = json.loads((out / "distill" / "summary.json").read_text())
    assert main(["distill", str(job), "--set", "distill.stages.0.epochs=1"]) == 0
    after = json.loads((out / "distill" / "summary.json").read_text())
    assert after["mlflow_run_id"] != before["mlflow_run_id"]
    assert [h["stage"] for h in after["history"]] == ["logits", "labels"]
    assert AutoModelForSequenceClassification.from_pretrained(out / "distill" / "student").num_labels == 2
