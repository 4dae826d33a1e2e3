"""Distributed distillation as users run it: 2 CPU workers (gloo) with real DeepSpeed engines. ZeRO 2 and 3
follow ZeRO 0's loss curve; a restarted driver and a killed worker both resume from the last checkpoint; the
export (ZeRO-3 gathered) round-trips and is an MLflow model. The labels come from one `xdray label` run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from xdray.common.files import read_json
from xdray.common.tracking import Tracker, tracking_uri
from xdray.config import load_config
from xdray.distill.run import in_memory, run_distill

from .conftest import tiny_config

pytestmark = pytest.mark.slow

CHECKPOINT_EVERY = 6


def xdray(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xdray.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def job(tiny_task, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    cfg = tiny_config(
        tiny_task, root / "out",
        label={"teacher": str(tiny_task["backbone"]), "actors": 1, "cpus_per_actor": 1},
        distill={"checkpoint_every": CHECKPOINT_EVERY, "log_every": 1, "warmup_steps": 3, "max_failures": 1,
                 "stages": [  # the paper's schedule, shortest: 4 phases
                     {"name": "hidden", "data": "transfer", "loss": "hidden", "epochs": 1},
                     {"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": 1, "unfreeze": "gradual"},
                     {"name": "labels", "data": "train", "loss": "ce", "epochs": 1}]},
    )
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = xdray("label", str(path))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return path


def variant(job: Path, name: str, **distill) -> Path:
    """The same job in its own output directory, reading the module's labels."""
    raw = yaml.safe_load(job.read_text())
    labels = str(Path(raw["output_dir"]) / "label" / "data")
    raw["output_dir"] = str(job.parent / name)
    raw["distill"] = {**raw["distill"], "labels": labels, **distill}
    path = job.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def checkpoints(cfg) -> list[Path]:
    return sorted(cfg.step_dir("distill").glob("ray/distill-*/checkpoint_*/schedule.json"))


def settled_steps(cfg, quiet: float = 5.0, limit: float = 60.0) -> set[int]:
    """The steps of the run's checkpoints once neither they nor the controller's snapshot have changed for
    ``quiet`` seconds."""
    def state():
        snapshot = list(cfg.step_dir("distill").glob("ray/distill-*/checkpoint_manager_snapshot.json"))
        return [str(p) for p in checkpoints(cfg)], [p.stat().st_mtime_ns for p in snapshot]

    last, since, deadline = state(), time.time(), time.time() + limit
    while time.time() - since < quiet and time.time() < deadline:
        time.sleep(0.5)
        now = state()
        if now != last:
            last, since = now, time.time()
    return {read_json(p)["step"] for p in checkpoints(cfg)}


def test_a_restarted_driver_resumes_from_the_last_checkpoint(job):
    path = variant(job, "restart")
    cfg = load_config(path)
    proc = xdray("distill", str(path))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(read_json(p)["phase"] >= 1 for p in checkpoints(cfg)):  # well into the run
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    assert not (cfg.step_dir("distill") / "summary.json").exists()
    # the resume starts from the latest checkpoint the run had registered: the newest upload may not be yet.
    # Ray's workers are not in the driver's process group: for a second or two after the kill the controller
    # and workers live on, and may upload and register one more checkpoint, so read them once that settles.
    saved = settled_steps(cfg)

    again = xdray("distill", str(path))
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    summary = read_json(cfg.step_dir("distill") / "summary.json")
    assert summary["resumed_from_step"] in saved and summary["resumed_from_step"] > 0
    names = [r["stage"] for r in summary["history"]]
    assert names[0] == "hidden" and names[-1] == "labels"  # the records from before the kill are kept
    steps = [r["step"] for r in summary["history"]]
    assert steps == sorted(steps)


@pytest.fixture(scope="module")
def runs(job, ray_local) -> dict:
    """The same seeded job under ZeRO 2 and 3 (one process: the module's Ray). ZeRO 2 streams the transfer set
    from its files every epoch; ZeRO 3 reads it into the object store once (``auto`` on a small set)."""
    results = {}
    for stage in (2, 3):
        cache = {"transfer_cache": "stream"} if stage == 2 else {}
        cfg = load_config(variant(job, f"zero{stage}", deepspeed={"zero_stage": stage}, **cache))
        results[stage] = (cfg, run_distill(cfg, Tracker.for_config(cfg)))
    cfg = load_config(variant(job, "bf16", deepspeed={"zero_stage": 2, "precision": "bf16"}))
    results["bf16"] = (cfg, run_distill(cfg, Tracker.for_config(cfg)))
    return results


def step_losses(cfg, summary: dict) -> dict[str, list[float]]:
    client = MlflowClient(tracking_uri(cfg))
    run = client.get_run(summary["mlflow_run_id"])
    keys = sorted(k for k in run.data.metrics if k.startswith("train/") and k.endswith("/total"))
    return {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
            for k in keys}


def test_transfer_set_is_kept_in_the_object_store_only_when_it_fits(ray_local, tmp_path):
    small, huge = tmp_path / "small", tmp_path / "huge"
    small.mkdir(), huge.mkdir()
    (small / "chunk-000000.parquet").write_bytes(b"x" * 4096)
    object_store = ray_local.cluster_resources()["object_store_memory"]
    with open(huge / "chunk-000000.parquet", "wb") as f:  # sparse: the object store's size without the bytes
        f.truncate(int(object_store))
    assert in_memory("auto", small) and not in_memory("auto", huge)
    assert in_memory("memory", huge) and not in_memory("stream", small)


def test_zero_3_follows_the_zero_2_loss_curve(runs):
    """ZeRO 3 partitions the parameters too, ZeRO 2 only gradients and optimizer state: the same seeded job
    takes the same steps (ZeRO 0 against 2 held as well when this was measured with all three)."""
    base_cfg, base = runs[2]
    reference = step_losses(base_cfg, base)
    assert {"train/hidden/total", "train/labels/total"} <= set(reference)
    assert sum(len(v) for v in reference.values()) == base["history"][-1]["step"]  # every step logged
    cfg, summary = runs[3]
    curves = step_losses(cfg, summary)
    assert curves.keys() == reference.keys()
    for key, values in reference.items():
        assert curves[key] == pytest.approx(values, rel=1e-3, abs=1e-5), key
    assert summary["dev_accuracy"] == pytest.approx(base["dev_accuracy"], abs=1 / 60 + 1e-9)


def test_a_bf16_distillation_follows_the_fp32_curve_and_exports_fp32(runs):
    """bf16 keeps 8 mantissa bits: each product is rounded by up to 2^-9 (0.2%), and the weights drift apart
    step by step, so each phase's curve is compared in the mean (within 5%; measured 0.1-0.8%), and only the
    run's very first step pointwise (1%: rounding alone, no drift yet; measured 0.08%), not every step as the
    ZeRO stages are (a later phase's first step already carries the drift: 1.4% seen). The export is float32
    and scores on a CPU like fp32's."""
    fp32_cfg, fp32 = runs[2]
    cfg, summary = runs["bf16"]
    reference, curves = step_losses(fp32_cfg, fp32), step_losses(cfg, summary)
    assert curves.keys() == reference.keys()
    first = f"train/{fp32['history'][0]['stage']}/total"
    assert curves[first][0] == pytest.approx(reference[first][0], rel=1e-2)
    for key, values in reference.items():
        ours = curves[key]
        assert len(ours) == len(values)
        assert sum(ours) / len(ours) == pytest.approx(sum(values) / len(values), rel=5e-2), key
    student = Path(summary["model_dir"])
    assert read_json(student / "config.json")["dtype"] == "float32"
    with safe_open(student / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    model = AutoModelForSequenceClassification.from_pretrained(student)
    assert next(model.parameters()).dtype == torch.float32
    assert summary["test_accuracy"] == pytest.approx(fp32["test_accuracy"], abs=0.1)


def test_zero_3_export_round_trips_and_is_an_mlflow_model(runs):
    cfg, summary = runs[3]
    student = Path(summary["model_dir"])
    assert (student / "model.safetensors").is_file() and not list(student.glob("*.bin"))
    model = AutoModelForSequenceClassification.from_pretrained(student).eval()
    tokenizer = AutoTokenizer.from_pretrained(student)
    assert model.num_parameters() == summary["params"]["total"]
    texts = ["the film is great", "a dull plot"]
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    mlflow.set_tracking_uri(tracking_uri(cfg))
    try:
        loaded = mlflow.transformers.load_model(summary["mlflow_model_uri"], return_type="components")
    finally:
        mlflow.set_tracking_uri(None)
    with torch.no_grad():
        again = loaded["model"].eval()(**loaded["tokenizer"](texts, return_tensors="pt", padding=True)).logits
    assert torch.allclose(logits, again, atol=1e-6)


def test_a_killed_worker_is_replaced_and_the_run_resumes(job, runs):
    cfg = load_config(variant(job, "killed", deepspeed={"zero_stage": 2}))
    killed = []

    def kill_a_worker():
        deadline = time.time() + 300
        # the second checkpoint on storage: the first one is registered with the run by then
        while time.time() < deadline and len(checkpoints(cfg)) < 2:
            time.sleep(0.2)
        alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], detail=True)
        if alive:
            pid = max(a.pid for a in alive)
            os.kill(pid, signal.SIGKILL)  # the worker process itself, not a Ray-level actor kill
            killed.append(pid)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    summary = run_distill(cfg, Tracker.for_config(cfg))
    killer.join()
    assert killed, "no Ray Train worker process was found to kill"
    assert summary["resumed_from_step"] >= CHECKPOINT_EVERY
    uninterrupted = runs[2][1]
    assert summary["phases"] == uninterrupted["phases"]
    assert summary["dev_accuracy"] == pytest.approx(uninterrupted["dev_accuracy"], abs=0.1)
