"""Ray Train + DeepSpeed: one worker loop for every training job (teacher fine-tuning, distillation, search
trials), and the ``TorchTrainer`` assembly around it.

Each worker builds its model, hands it to a real DeepSpeed engine (ZeRO stage from the config), and runs the
job's stages in order. Data arrives through ``ray.train.get_dataset_shard``. After each epoch every rank
evaluates its slice of dev, the counts are summed, and the best epoch of each stage is kept as a DeepSpeed
checkpoint (saved and restored by all ranks) — so selection uses dev only.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from xdray.config import StudentConfig, TrainerConfig
from xdray.distill.batches import collate, length_sorted_batches
from xdray.distill.losses import stage_loss
from xdray.models.student import build_student, param_counts
from xdray.models.teacher import load_classifier
from xdray.runtime import replace_dir, staging_dir

LOG_EVERY = 20


@dataclass
class TrainSpec:
    """Everything a worker needs, as plain data (it travels to workers inside ``train_loop_config``)."""

    role: str  # "teacher": fine-tune ``init`` with a new head; "student": build a student from teacher ``init``
    init: str
    stages: list[dict]
    num_labels: int
    max_length: int
    batch_size: int
    lr: float
    deepspeed: dict
    dev_texts: list[str]
    dev_labels: list[int]
    scratch: str  # DeepSpeed checkpoints of each stage's best epoch
    seed: int = 0
    student: dict | None = None
    tracking_uri: str | None = None
    run_id: str | None = None
    trust_remote_code: bool = False
    tags: dict = field(default_factory=dict)


def deepspeed_config(spec: TrainSpec, world_size: int) -> dict:
    ds = spec.deepspeed
    return {
        "train_batch_size": spec.batch_size * world_size,
        "train_micro_batch_size_per_gpu": spec.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": ds["grad_clip"],
        "optimizer": {"type": "AdamW", "params": {"lr": spec.lr, "weight_decay": 0.01, "torch_adam": True}},
        "zero_optimization": {"stage": ds["zero_stage"]},
        "bf16": {"enabled": ds["precision"] == "bf16"},
        "fp16": {"enabled": ds["precision"] == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _build_model(spec: TrainSpec):
    if spec.role == "teacher":
        return load_classifier(spec.init, spec.num_labels, spec.trust_remote_code)
    teacher, tokenizer = load_classifier(spec.init, trust_remote_code=spec.trust_remote_code)
    student = build_student(StudentConfig(**spec.student), teacher, spec.num_labels, spec.seed)
    del teacher
    return student, tokenizer


def worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    spec = TrainSpec(**config)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # after DS_ACCELERATOR is set

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(spec.seed)
    model, tokenizer = _build_model(spec)
    counts = param_counts(model)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(spec, world),
    )
    tracker = None
    if rank == 0 and spec.run_id:
        from xdray.tracking import Tracker

        tracker = Tracker(spec.tracking_uri)
        tracker.params(spec.run_id, {"params": counts, "world_size": world, "zero_stage": spec.deepspeed["zero_stage"]})

    step, history, samples, train_seconds = 0, [], 0, 0.0
    for stage in spec.stages:
        shard = ray.train.get_dataset_shard(stage["data"])
        best, best_epoch = -1.0, -1
        for epoch in range(stage["epochs"]):
            engine.train()
            t0, seen, loss_sum, n_batches = time.perf_counter(), 0, 0.0, 0
            for raw in shard.iter_batches(
                batch_size=spec.batch_size, batch_format="numpy",
                local_shuffle_buffer_size=spec.batch_size * 16, local_shuffle_seed=spec.seed + epoch,
            ):
                batch = collate(raw, tokenizer, spec.max_length, engine.device)
                logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = stage_loss(stage["loss"], logits, batch, stage.get("temperature", 1.0))
                engine.backward(loss)
                engine.step()
                step, n_batches, seen = step + 1, n_batches + 1, seen + len(batch["input_ids"])
                loss_sum += loss.item()
                if tracker and step % LOG_EVERY == 0:
                    tracker.metrics(spec.run_id, {f"train/{stage['name']}/loss": loss.item()}, step)
            elapsed = time.perf_counter() - t0
            samples, train_seconds = samples + seen * world, train_seconds + elapsed
            dev_acc = _dev_accuracy(engine, tokenizer, spec, rank, world)
            if dev_acc > best:
                best, best_epoch = dev_acc, epoch
                if stage["epochs"] > 1:
                    engine.save_checkpoint(spec.scratch, tag=f"{stage['name']}-best")
            record = {
                "stage": stage["name"], "epoch": epoch, "step": step, "dev_accuracy": dev_acc,
                "loss": loss_sum / max(n_batches, 1), "samples_per_s": seen * world / max(elapsed, 1e-9),
            }
            history.append(record)
            if tracker:
                tracker.metrics(
                    spec.run_id,
                    {f"dev/{stage['name']}/accuracy": dev_acc, f"train/{stage['name']}/epoch_loss": record["loss"],
                     "train/samples_per_s": record["samples_per_s"]},
                    step,
                )
            ray.train.report({**record, "params": counts["total"], "final": False})
        if best_epoch != stage["epochs"] - 1:  # restore the stage's best epoch (all ranks: collective)
            engine.load_checkpoint(spec.scratch, tag=f"{stage['name']}-best")
    final_dev = _dev_accuracy(engine, tokenizer, spec, rank, world)
    nodes = [None] * world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    summary = {
        "dev_accuracy": final_dev, "params": counts, "history": history, "steps": step,
        "samples_per_s": samples / max(train_seconds, 1e-9), "world_size": world, "worker_nodes": nodes,
    }
    _report_final(engine, tokenizer, summary, rank, spec.deepspeed["zero_stage"])


@torch.no_grad()
def _dev_accuracy(engine, tokenizer, spec: TrainSpec, rank: int, world: int) -> float:
    """Each rank scores a slice of dev; counts are summed. ZeRO-3 needs every rank in every forward, so
    there all ranks score the whole of dev in the same order instead."""
    engine.eval()
    sharded = spec.deepspeed["zero_stage"] < 3 and world > 1
    texts = spec.dev_texts[rank::world] if sharded else spec.dev_texts
    labels = spec.dev_labels[rank::world] if sharded else spec.dev_labels
    correct = 0
    for idx in length_sorted_batches(texts, 64):
        raw = {"text": [texts[i] for i in idx]}
        batch = collate(raw, tokenizer, spec.max_length, engine.device)
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        correct += int((logits.argmax(-1).cpu() == torch.tensor([labels[i] for i in idx])).sum())
    totals = torch.tensor([correct, len(texts)], dtype=torch.float64)
    if sharded and dist.is_initialized():
        dist.all_reduce(totals)
    engine.train()
    return float(totals[0] / max(totals[1], 1))


def _report_final(engine, tokenizer, summary: dict, rank: int, zero_stage: int) -> None:
    """Consolidated HF directory (safetensors) from rank 0, reported as the run's checkpoint."""
    import deepspeed

    with tempfile.TemporaryDirectory() as tmp:
        params = list(engine.module.parameters())
        gather = deepspeed.zero.GatheredParameters(params) if zero_stage == 3 else nullcontext()
        with gather:
            if rank == 0:
                engine.module.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
                Path(tmp, "xdray_train.json").write_text(json.dumps(summary, indent=2))
        checkpoint = Checkpoint.from_directory(tmp) if rank == 0 else None
        ray.train.report({k: v for k, v in summary.items() if k != "history"} | {"final": True}, checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------------------
# Driver side


def fit(
    spec: TrainSpec,
    trainer_cfg: TrainerConfig,
    datasets: dict,
    storage: Path,
    name: str,
    callbacks: list | None = None,
) -> ray.train.Result:
    """Run one training job on Ray Train and return its result (raises if the job failed)."""
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=asdict(spec),
        scaling_config=ScalingConfig(
            num_workers=trainer_cfg.workers,
            use_gpu=trainer_cfg.use_gpu,
            resources_per_worker={"CPU": trainer_cfg.cpus_per_worker, **({"GPU": 1} if trainer_cfg.use_gpu else {})},
        ),
        run_config=RunConfig(name=name, storage_path=str(storage), callbacks=callbacks or []),
        datasets=datasets,
    )
    return trainer.fit()


def export_student(result: ray.train.Result, dest: Path) -> dict:
    """Copy the consolidated HF directory out of the Ray checkpoint; returns the worker's summary."""
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
    tmp = staging_dir(dest)
    result.checkpoint.to_directory(str(tmp))
    replace_dir(tmp, dest)
    return json.loads((dest / "xdray_train.json").read_text())
