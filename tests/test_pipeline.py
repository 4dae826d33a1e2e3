"""End to end: `xdray pipeline` on the tiny task, as a user runs it (a subprocess with its own local Ray, real
DeepSpeed engines and a real MLflow store), and what its console shows. Then a rerun skips every completed step."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from xdray.cli import main

from .conftest import tiny_config

pytestmark = pytest.mark.slow
STEPS = ("teacher", "label", "distill", "search", "export")


@pytest.fixture(scope="module")
def pipeline_console(tiny_task, tmp_path_factory):
    """The pipeline's run: (job, output dir, what the console showed)."""
    root = tmp_path_factory.mktemp("pipeline")
    job = root / "job.yaml"
    raw = tiny_config(tiny_task, root / "out", mlflow={"experiment": "xdray-test", "register": "xdray-tiny"},
                      export={"latency": {"sentences": 8, "batch_sizes": [1, 4], "rounds": 2}})
    job.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "xdray.cli", "pipeline", str(job)], capture_output=True, text=True,
                          cwd=root, timeout=1500)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    return job, root / "out", console


@pytest.fixture(scope="module")
def pipeline_run(pipeline_console, ray_local):
    """The pipeline's outputs, and this process's Ray for the tests that run more steps in-process."""
    return pipeline_console[:2]


def test_the_console_is_short_and_the_libraries_output_is_in_the_log(pipeline_console):
    _, out, console = pipeline_console
    lines = console.strip().splitlines()
    log = out / "logs" / "xdray.log"
    assert len(lines) <= 40, console
    assert lines[0].startswith("xdray pipeline ") and lines[0].endswith(f"log: {log}")
    for i, step in enumerate(STEPS, 1):
        assert f"[{i}/5] {step}: running" in console and f"[{i}/5] {step}: done in " in console
    assert "student (distilled)" in console and "student int8 (ONNX)" in console  # the results table
    assert "size on disk" in console and "speedup" in console
    assert "RayTrainWorker" not in console and "Started a local Ray instance" not in console
    text = log.read_text()
    assert "Started a local Ray instance" in text  # Ray's own logging
    assert "Trial status" in text  # Tune's status table
    assert all(line in text for line in lines)  # xdray's lines are in the log too


def test_labels_have_one_row_per_unique_id_and_the_teachers_states(pipeline_run, tiny_task):
    _, out = pipeline_run
    data = out / "label" / "data"
    table = pq.read_table(data / "transfer")
    ids = table.column("id").to_pylist()
    lines = {line.strip() for line in tiny_task["transfer"].read_text().splitlines() if line.strip()}
    assert len(ids) == len(set(ids)) == len(lines)
    assert table.schema.field("logits").type.value_type.bit_width == 32
    manifest = json.loads((data / "_manifest.json").read_text())
    assert manifest["rows"] == len(ids) and manifest["teacher"] == str(out / "teacher" / "model")
    # auto: the [CLS] states the top-aligned map needs for the 1-layer student and the searched 1/2 layers
    assert manifest["hidden_layers"] == [0, 1, 2] and manifest["schema_version"] == 3
    for k in manifest["hidden_layers"]:
        field = table.schema.field(f"hidden_{k}")
        assert str(field.type.value_type) == "halffloat" and len(table.column(f"hidden_{k}")[0]) == 32
    dev = pq.read_table(data / "dev")
    assert dev.num_rows == manifest["dev_rows"] == 60 and sorted(set(dev.column("label").to_pylist())) == [0, 1]
    summary = json.loads((out / "label" / "summary.json").read_text())
    assert summary["cleaning"]["empty"] == 2 and summary["cleaning"]["duplicates"] > 0


def test_progressive_student_loads_with_auto_classes_and_improved_each_stage(pipeline_run):
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
    assert summary["phases"] == ["hidden", "logits/block.0", "logits/embeddings", "labels"]
    history = summary["history"]
    assert [h["stage"] for h in history] == ["hidden"] * 2 + ["logits/block.0"] * 3 + ["logits/embeddings"] * 3 + [
        "labels"]
    assert [h["trained_units"] for h in history if h["stage"].startswith("logits/")][::3] == [
        ["block.0", "head"], ["embeddings", "block.0", "head"]]
    hidden = [h["dev_loss"] for h in history if h["stage"] == "hidden"]
    logits = [h["dev_loss"] for h in history if h["stage"].startswith("logits/")]
    assert hidden[-1] < hidden[0] and min(logits[3:]) < logits[0]  # dev loss falls within and across sub-stages
    # the tiny task is easy: a student that learned nothing would sit at 50%
    assert summary["test_accuracy"] > 0.7
    assert json.loads((out / "teacher" / "summary.json").read_text())["test_accuracy"] > 0.7


def test_search_ran_every_architecture_on_the_same_parquet(pipeline_run):
    _, out = pipeline_run
    summary = json.loads((out / "search" / "summary.json").read_text())
    assert sorted(t["arch"] for t in summary["trials"]) == ["L1-H16-A2-F64", "L2-H16-A2-F64"]
    assert summary["teacher_forwards"] == 0 and summary["completed"] == 2
    best = AutoModelForSequenceClassification.from_pretrained(out / "search" / "best_student")
    assert best.config.num_hidden_layers == {"L1-H16-A2-F64": 1, "L2-H16-A2-F64": 2}[summary["best"]["arch"]]
    assert summary["pareto"] and (out / "search" / "pareto.png").stat().st_size > 1000


def test_mlflow_holds_parent_child_and_trial_runs(pipeline_run):
    _, out = pipeline_run
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xdray-test")
    runs = client.search_runs([exp.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    parent = by_name["pipeline"]
    for step in STEPS:
        assert by_name[step].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert by_name[step].info.status == "FINISHED"
    trials = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(trials) == 2
    assert all(t.data.tags["mlflow.parentRunId"] == by_name["search"].info.run_id for t in trials)
    assert 0 < by_name["distill"].data.metrics["test_accuracy"] <= 1
    metrics = by_name["distill"].data.metrics  # logged by Ray Train rank 0
    assert {"dev/logits/block.0/accuracy", "dev/hidden/loss", "train/logits/block.0/logits_mse"} <= set(metrics)
    assert by_name["label"].data.metrics["rows"] > 0
    assert parent.data.metrics["speedup"] > 0
    for step in STEPS:
        logged = {a.path for a in client.list_artifacts(by_name[step].info.run_id)}
        assert "summary.json" in logged, (step, logged)
        assert step == "label" or "model" in logged, (step, logged)  # every model a step produces
    logged = {a.path for a in client.list_artifacts(by_name["export"].info.run_id, "onnx")}
    assert {"onnx/model.onnx", "onnx/model.int8.onnx", "onnx/tokenizer.json", "onnx/export.json"} <= logged
    summary = json.loads((out / "pipeline" / "summary.json").read_text())
    assert summary["mlflow_run_id"] == parent.info.run_id


def test_the_export_matches_torch_and_is_timed_against_the_teacher(pipeline_run):
    _, out = pipeline_run
    summary = json.loads((out / "export" / "summary.json").read_text())
    distill = json.loads((out / "distill" / "summary.json").read_text())
    assert summary["model_dir"] == str(out / "distill" / "student") and summary["data"] == "source"
    assert summary["onnx_max_abs_diff"] <= 1e-4 and summary["opset"] == 17
    metrics = summary["metrics"]
    assert metrics["torch_fp32"]["test"]["accuracy"] == pytest.approx(distill["test_accuracy"], abs=1e-4)
    assert metrics["onnx_fp32"]["test"] == metrics["torch_fp32"]["test"]
    assert summary["int8_metric_delta"] == pytest.approx(
        metrics["onnx_int8"]["test"]["score"] - metrics["onnx_fp32"]["test"]["score"], abs=1e-4)
    assert set(summary["latency_ms"]) == {"teacher", "torch_fp32", "onnx_fp32", "onnx_int8"}
    assert all(set(ms) == {"b1", "b4"} and min(ms.values()) > 0 for ms in summary["latency_ms"].values())
    assert set(summary["speedup_vs_teacher"]) == {"torch_fp32", "onnx_fp32", "onnx_int8"}
    assert summary["size_bytes"]["onnx_fp32"] > 0 and summary["size_bytes"]["torch_fp32"] > 0
    pipeline = json.loads((out / "pipeline" / "summary.json").read_text())
    assert pipeline["int8_test_accuracy"] == metrics["onnx_int8"]["test"]["accuracy"]
    assert pipeline["int8_latency_ms"] > 0 and pipeline["int8_bytes"] == summary["size_bytes"]["onnx_int8"]


def test_the_registered_champion_loads_by_alias_and_serves_text(pipeline_run, monkeypatch):
    """The registry round trip a user makes: the alias, MLflow's loader, a DataFrame of text; the served int8
    graph answers as ONNX Runtime does on the exported folder."""
    import mlflow.pyfunc
    import pandas as pd

    from xdray.export.onnx import OrtClassifier

    _, out = pipeline_run
    summary = json.loads((out / "export" / "summary.json").read_text())
    assert summary["registered"] == "models:/xdray-tiny@champion"
    # how a user points MLflow's loader at the store (models:/ URIs resolve against it); a real registry, no mock
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/xdray-tiny@champion")
    texts = ["what a wonderful film", "the plot is dull from start to finish"]
    predicted = served.predict(pd.DataFrame({"text": texts}))
    assert served.metadata.signature is not None and list(predicted.columns) == ["label", "score"]
    export_dir = out / "export" / "model"
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    logits = OrtClassifier(export_dir / "model.int8.onnx")(**tokenizer(texts, padding=True, return_tensors="pt"))
    assert predicted["label"].tolist() == [str(i) for i in logits.argmax(-1).tolist()]
    version = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_model_version_by_alias("xdray-tiny", "champion")
    assert version.run_id == summary["mlflow_run_id"]


def test_rerun_skips_completed_steps(pipeline_run, capsys):
    job, out = pipeline_run
    before = {s: (out / s / "summary.json").stat().st_mtime_ns for s in STEPS}
    assert main(["pipeline", str(job)]) == 0
    captured = capsys.readouterr().out
    for step, mtime in before.items():
        assert f"{step}: complete, skipping" in captured
        assert (out / step / "summary.json").stat().st_mtime_ns == mtime
    summary = json.loads((out / "pipeline" / "summary.json").read_text())
    assert summary["ran"] == [] and summary["skipped"] == list(STEPS)


def test_online_teacher_attention_and_token_losses_with_a_factorized_student(pipeline_run):
    """`xdray distill` asked for explicitly runs again: here with the frozen teacher inside the workers, attention
    maps across different head counts (2 → 4), MiniLMv2 query/key/value relations (4 relation heads of widths
    32 and 16), token-level hidden states and an ALBERT-style student."""
    job, out = pipeline_run
    before = json.loads((out / "distill" / "summary.json").read_text())
    stages = ("[{name: rep, data: transfer, loss: [hidden, attention, relations], epochs: 2}, "
              "{name: labels, data: train, loss: ce, epochs: 1}]")
    assert main(["distill", str(job), "--set", f"distill.stages={stages}", "--set", "distill.teacher_mode=online",
                 "--set", "distill.representation.positions=tokens", "--set", "distill.representation.relation_heads=4",
                 "--set", "distill.student={layers: 1, hidden: 16, heads: 4, embedding_size: 8}"]) == 0
    after = json.loads((out / "distill" / "summary.json").read_text())
    assert after["mlflow_run_id"] != before["mlflow_run_id"]
    assert after["teacher_forwards"] > 0 == before["teacher_forwards"]  # online: the counter sees the teacher run
    assert [h["stage"] for h in after["history"]] == ["rep", "rep", "labels"]
    rep = [h["dev_loss"] for h in after["history"] if h["stage"] == "rep"]
    assert rep[1] < rep[0]
    student = AutoModelForSequenceClassification.from_pretrained(out / "distill" / "student")
    assert type(student).__name__ == "AlbertForSequenceClassification" and student.config.embedding_size == 8


def test_labels_missing_the_needed_teacher_states_are_refused(pipeline_run, tmp_path, capsys):
    job, out = pipeline_run
    copy = tmp_path / "labels"
    shutil.copytree(out / "label" / "data", copy)
    manifest = json.loads((copy / "_manifest.json").read_text())
    (copy / "_manifest.json").write_text(json.dumps({**manifest, "hidden_layers": []}))
    before = (out / "distill" / "summary.json").read_bytes()
    assert main(["distill", str(job), "--set", f"distill.labels={copy}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the hidden loss needs teacher layers [1, 2]" in err and "fix:" in err
    assert (out / "distill" / "summary.json").read_bytes() == before  # earlier outputs intact
