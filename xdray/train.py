"""Ray Train + DeepSpeed: one worker loop for every training job (teacher fine-tuning, distillation, search
trials), and the ``TorchTrainer`` assembly around it.

Each worker builds its model, hands it to a real DeepSpeed engine (ZeRO stage from the config) and runs the
progressive schedule (``distill.schedule.run_schedule``) on it. Training data arrives through
``ray.train.get_dataset_shard``; dev is one table in the object store that every rank scores a share of. Each
phase's best weights are kept as a DeepSpeed checkpoint (saved and restored by all ranks), so selection uses dev
only: workers never see the test split.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from transformers import AutoConfig

from xdray.config import StudentConfig, TrainerConfig
from xdray.distill.batches import table_batches
from xdray.distill.losses import layer_map
from xdray.distill.objective import DistillModule, Objective, teacher_targets
from xdray import checkpoints
from xdray.distill.schedule import Data, Phase, Position, evaluate, expand_stages, param_groups, run_schedule
from xdray.engine import DeepSpeedBackend, TrainSpec, deepspeed_config, save_fp32
from xdray.models.student import build_student, encoder_blocks, param_counts
from xdray.models.teacher import load_classifier
from xdray.transfer.metrics import task_metrics
from xdray.transfer.model import load_task_model, task_collate
from xdray.runtime import file_stamp, keep_freed_memory, replace_dir, staging_dir

LOG_EVERY = 20
DEV_BATCH = 64


@dataclass
class Built:
    module: DistillModule
    tokenizer: object
    teacher: torch.nn.Module | None  # kept only for the online mode
    layer_map: tuple[int, ...]
    teacher_loaded: bool = True
    teacher_forwards: list[int] = field(default_factory=lambda: [0])


def count_forwards(model: torch.nn.Module) -> list[int]:
    """A counter of ``model``'s forward calls (one cell, updated by a hook): how many teacher passes ran."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    model.register_forward_pre_hook(hook)
    return calls


def _uses(spec: TrainSpec, loss: str) -> bool:
    return any(loss in s["loss"] for s in spec.stages)


def _build(spec: TrainSpec) -> Built:
    if spec.role == "teacher":
        model, tokenizer = load_classifier(spec.init, spec.num_labels, spec.trust_remote_code)
        return Built(DistillModule(model, None, 0), tokenizer, None, ())
    if spec.role == "transfer":
        model, tokenizer = load_task_model(spec.init, spec.task, spec.seed, spec.trust_remote_code)
        return Built(DistillModule(model, None, 0), tokenizer, None, ())
    student_cfg = StudentConfig(**spec.student)
    keep = spec.teacher_mode == "online" and any(s["data"] == "transfer" for s in spec.stages)
    if spec.student_dir and not keep:  # built by the search trial: only the teacher's config is read here
        student, tokenizer = load_classifier(spec.student_dir)
        teacher, teacher_config = None, AutoConfig.from_pretrained(spec.init)
    else:
        teacher, tokenizer = load_classifier(spec.init, trust_remote_code=spec.trust_remote_code)
        student, teacher_config = build_student(student_cfg, teacher, spec.num_labels, spec.seed), teacher.config
    rep = spec.representation
    mapping = tuple(layer_map(student_cfg.layers, teacher_config.num_hidden_layers, rep["layer_map"]))
    attention_maps = _uses(spec, "attention") and rep["attention"] == "mean_heads"
    if attention_maps:  # fused attention kernels return no attention probabilities
        for model in (m for m in (student, teacher) if m is not None):
            model.set_attn_implementation("eager")
    states = len(mapping) if _uses(spec, "hidden") else 0
    module = DistillModule(student, teacher_config.hidden_size, states)
    if not keep:
        return Built(module, tokenizer, None, mapping, teacher_loaded=teacher is not None)
    teacher.eval().requires_grad_(False)
    return Built(module, tokenizer, teacher, mapping, teacher_forwards=count_forwards(teacher))


def worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    spec = TrainSpec(**config)
    keep_freed_memory()
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # after DS_ACCELERATOR is set

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(spec.seed)
    built = _build(spec)
    counts = param_counts(built.module.student)
    engine, *_ = deepspeed.initialize(
        model=built.module, model_parameters=param_groups(built.module), config=deepspeed_config(spec, world)
    )
    if built.teacher is not None:
        built.teacher.to(engine.device)
    # ZeRO-3 needs every rank in every forward, so there all ranks score the whole of dev; so do transfer tasks,
    # whose metrics (entity F1, Pearson) do not add up across shards
    sharded = spec.deepspeed["zero_stage"] < 3 and world > 1 and spec.task is None
    backend = DeepSpeedBackend(engine, spec.scratch, sharded)
    resume = checkpoints.restore(engine, spec.scratch, rank)
    if resume is not None and "final" in resume:  # the run had finished: hand its result back
        ray.train.report({k: v for k, v in resume["final"].items() if k != "history"} | {"final": True},
                         checkpoint=resume["checkpoint"] if rank == 0 else None)
        return
    tracker = None
    if rank == 0 and spec.run_id:
        from xdray.tracking import Tracker

        tracker = Tracker(spec.tracking_uri)
        tracker.params(spec.run_id, {"params": counts, "world_size": world, "zero_stage": spec.deepspeed["zero_stage"],
                                     "layer_map": list(built.layer_map), "grad_accum": spec.grad_accum})
        if resume:  # a metric, not a param: params are immutable and a run may resume more than once
            tracker.metrics(spec.run_id, {"resumed_from_step": resume["step"]}, resume["step"])

    student_cfg = spec.student or {}
    phases = expand_stages(spec.stages, len(encoder_blocks(built.module.student)),
                           student_cfg.get("freeze_embeddings", False))
    objective_for = _objectives(spec, built)
    data = _data(spec, built, engine.device, objective_for, rank if sharded else 0, world if sharded else 1)

    def on_epoch(record: dict) -> None:
        record["samples_per_s"] = record["samples"] * world / max(record["seconds"], 1e-9)
        if tracker:
            name = record["stage"]
            tracker.metrics(spec.run_id, {
                f"dev/{name}/accuracy": record["dev_accuracy"], f"dev/{name}/loss": record["dev_loss"],
                f"dev/{name}/score": record["dev_score"],
                f"train/{name}/epoch_loss": record["loss"], "train/samples_per_s": record["samples_per_s"],
            }, record["step"])
        plain = {k: v for k, v in record.items() if not isinstance(v, list)}
        ray.train.report({**plain, "params": counts["total"], "teacher_forwards": built.teacher_forwards[0],
                          "final": False})

    def on_step(phase: Phase, step: int, parts: dict) -> None:
        if tracker and step % spec.log_every == 0:
            tracker.metrics(spec.run_id, {f"train/{phase.name}/{k}": v.item() for k, v in parts.items()}, step)

    def on_checkpoint(pos: Position) -> None:
        checkpoints.save_and_report(engine, spec.scratch, pos, rank, {"params": counts["total"]})
        if tracker:
            tracker.metrics(spec.run_id, {"checkpoint/step": pos.step, "checkpoint/phase": pos.phase}, pos.step)

    history = run_schedule(backend, phases, objective_for, data, spec.lr, on_epoch, on_step,
                           warmup_steps=spec.warmup_steps, checkpoint_every=spec.checkpoint_every,
                           on_checkpoint=on_checkpoint, resume=resume)
    final = evaluate(backend, objective_for(phases[-1]), data.dev(phases[-1]), data.metric)
    nodes = [None] * world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    seconds = sum(r["seconds"] for r in history)
    summary = {
        "dev_accuracy": final["accuracy"], "dev_score": final["score"],
        "dev_metrics": {k: v for k, v in final.items() if k not in ("loss", "score")}, "params": counts, "history": history, "steps": history[-1]["step"],
        "samples_per_s": sum(r["samples"] for r in history) * world / max(seconds, 1e-9), "world_size": world,
        "worker_nodes": nodes, "layer_map": list(built.layer_map), "phases": [p.name for p in phases],
        "resumed_from_step": resume["step"] if resume else 0, "grad_accum": spec.grad_accum,
        "teacher_forwards": built.teacher_forwards[0], "teacher_loaded": built.teacher_loaded,
    }
    _report_final(engine, built.tokenizer, summary, rank, spec.deepspeed["zero_stage"])


def _objectives(spec: TrainSpec, built: Built):
    rep = spec.representation

    def objective_for(phase: Phase) -> Objective:
        return Objective(
            losses=phase.losses, layer_map=built.layer_map, positions=rep["positions"], hidden_kind=rep["hidden_loss"],
            attention=rep["attention"], temperature=phase.temperature,
        )

    return objective_for


def _data(spec: TrainSpec, built: Built, device, objective_for, dev_rank: int, dev_world: int) -> Data:
    """Batches for ``run_schedule``: this worker's shard of the phase's dataset and its share of dev, each with
    the teacher targets the phase needs (from the Parquet, or from the frozen teacher in online mode)."""
    dev_raw = table_batches(ray.get(spec.dev), DEV_BATCH)[dev_rank::dev_world]
    dev_cache: dict[Objective, list[dict]] = {}
    collate = task_collate(spec.task)

    def with_targets(batch: dict, phase: Phase) -> dict:
        if built.teacher is not None and phase.data == "transfer":
            batch |= teacher_targets(built.teacher, batch, objective_for(phase))
        return batch

    def train(phase: Phase, epoch: int, skip: int):
        shard = ray.train.get_dataset_shard(phase.data)
        batches = shard.iter_batches(
            batch_size=spec.batch_size, batch_format="numpy",
            local_shuffle_buffer_size=spec.batch_size * 16, local_shuffle_seed=spec.seed + epoch,
        )
        for raw in itertools.islice(batches, skip, None):  # a resumed epoch skips what it already trained on
            yield with_targets(collate(raw, built.tokenizer, spec.max_length, device), phase)

    def dev(phase: Phase) -> list[dict]:
        key = objective_for(phase)
        if key not in dev_cache:  # the teacher runs over dev once per objective, not once per epoch
            dev_cache[key] = [with_targets(collate(r, built.tokenizer, spec.max_length, device), phase)
                              for r in dev_raw]
        return dev_cache[key]

    metric = (lambda logits, labels: task_metrics(spec.task, logits, labels)) if spec.task else None
    return Data(train=train, dev=dev, metric=metric)


def _report_final(engine, tokenizer, summary: dict, rank: int, zero_stage: int) -> None:
    """Consolidated HF directory (safetensors) from rank 0, reported as the run's checkpoint."""
    import deepspeed

    with tempfile.TemporaryDirectory() as tmp:
        student = engine.module.student
        gather = deepspeed.zero.GatheredParameters(list(student.parameters())) if zero_stage == 3 else nullcontext()
        with gather:
            if rank == 0:
                save_fp32(student, tmp)
                tokenizer.save_pretrained(tmp)
                Path(tmp, "xdray_train.json").write_text(json.dumps(summary, indent=2))
        checkpoint = Checkpoint.from_directory(tmp) if rank == 0 else None
        metrics = {k: v for k, v in summary.items() if k != "history"}
        ray.train.report(metrics | {"final": True}, checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------------------
# Driver side


def run_name(step: str, spec: TrainSpec, trainer_cfg: TrainerConfig, inputs: list[Path]) -> str:
    """``<step>-<hash>`` of everything that determines the run: a restarted job with the same config and inputs
    finds its own checkpoints (Ray Train resumes a reused ``RunConfig(name, storage_path)``), a changed one
    starts afresh instead of resuming someone else's."""
    plain = {f.name: getattr(spec, f.name) for f in fields(spec) if f.name not in ("dev", "run_id", "tracking_uri")}
    key = {"spec": plain, "trainer": trainer_cfg.model_dump(mode="json"),
           "inputs": {str(p): file_stamp(p) for p in inputs if p.exists()}}
    return f"{step}-{hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]}"


def fit(
    spec: TrainSpec,
    trainer_cfg: TrainerConfig,
    datasets: dict,
    storage: Path,
    name: str,
    callbacks: list | None = None,
) -> ray.train.Result:
    """Run one training job on Ray Train and return its result (raises if the job failed). Workers that die
    are replaced up to ``max_failures`` times and resume from the last checkpoint."""
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={f.name: getattr(spec, f.name) for f in fields(spec)},  # keeps the dev ObjectRef
        scaling_config=ScalingConfig(
            num_workers=trainer_cfg.workers,
            use_gpu=trainer_cfg.use_gpu,
            resources_per_worker={"CPU": trainer_cfg.cpus_per_worker, **({"GPU": 1} if trainer_cfg.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name, storage_path=str(storage), callbacks=callbacks or [],
            checkpoint_config=CheckpointConfig(num_to_keep=trainer_cfg.keep_checkpoints,
                                               checkpoint_score_attribute="dev_score", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=trainer_cfg.max_failures),
        ),
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
