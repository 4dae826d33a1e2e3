"""The worker loop every Ray Train + DeepSpeed job runs (teacher fine-tuning, distillation, search trials,
transfer tasks): it knows no task; the spec's ``Role`` says what to build, how to batch and how to score dev.

Each worker builds its model, hands it to a real DeepSpeed engine (ZeRO stage from the config) and runs the
progressive schedule (``distill.schedule.run_schedule``) on it. Each rank reads its own rows of the training
set (an object-store table or Parquet files) in a seeded per-epoch order (``train.order``); dev is one table
in the object store that every rank scores a share of. Each
phase's best weights are kept as a DeepSpeed checkpoint (saved and restored by all ranks), so selection uses dev
only: workers never see the test split.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from contextlib import nullcontext
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from xdray.common.files import write_json
from xdray.common.memory import keep_freed_memory
from xdray.distill.architectures import encoder_blocks, param_counts
from xdray.distill.batches import table_batches
from xdray.distill.objective import Objective, teacher_targets
from xdray.distill.schedule import Data, Phase, Position, evaluate, expand_stages, run_schedule
from xdray.train import checkpoints
from xdray.train.engine import DeepSpeedBackend, TrainSpec, build_engine, save_fp32
from xdray.train.order import blocks_of, epoch_batches, plan_epoch
from xdray.train.role import Built

DEV_BATCH = 64
PROGRESS = "progress.json"


def worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    spec = TrainSpec(**config)
    keep_freed_memory()
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before build_engine imports deepspeed
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(spec.seed)
    built = spec.role.build(spec)
    counts = param_counts(built.module.student)
    engine = build_engine(built.module, spec, world)
    if built.teacher is not None:
        built.teacher.to(engine.device)
    # ZeRO-3 needs every rank in every forward, so there all ranks score the whole of dev; so do roles whose
    # metrics (entity F1, Pearson) do not add up across shards
    sharded = spec.deepspeed["zero_stage"] < 3 and world > 1 and spec.role.shards_dev
    backend = DeepSpeedBackend(engine, spec.scratch, sharded)
    resume = checkpoints.restore(engine, spec.scratch, rank)
    if resume is not None and "final" in resume:  # the run had finished: hand its result back
        ray.train.report({k: v for k, v in resume["final"].items() if k != "history"} | {"final": True},
                         checkpoint=resume["checkpoint"] if rank == 0 else None)
        return
    tracker = None
    if rank == 0 and spec.run_id:
        from xdray.common.tracking import Tracker

        tracker = Tracker(spec.tracking_uri)
        tracker.params(spec.run_id, {"params": counts, "world_size": world, "zero_stage": spec.deepspeed["zero_stage"],
                                     "layer_map": list(built.layer_map), "grad_accum": spec.grad_accum})
        if resume:  # a metric, not a param: params are immutable and a run may resume more than once
            tracker.metrics(spec.run_id, {"resumed_from_step": resume["step"]}, resume["step"])

    phases = expand_stages(spec.stages, len(encoder_blocks(built.module.student)), built.freeze_embeddings)
    objective_for = _objectives(spec, built)
    data = _data(spec, built, engine.device, objective_for, rank, world, sharded)

    progress = None
    if rank == 0:
        progress = Progress(Path(spec.scratch) / PROGRESS, sum(p.epochs for p in phases),
                            len(resume["history"]) if resume else 0)

    def on_epoch(record: dict) -> None:
        if progress:
            progress.epoch(record)
        if tracker:
            name = record["stage"]
            tracker.metrics(spec.run_id, {
                f"dev/{name}/accuracy": record["dev_accuracy"], f"dev/{name}/loss": record["dev_loss"],
                f"dev/{name}/score": record["dev_score"],
                f"train/{name}/epoch_loss": record["loss"], "train/samples_per_s": record["samples_per_s"],
                "train/tokens_per_s": record["tokens_per_s"],
            }, record["step"])
        plain = {k: v for k, v in record.items() if not isinstance(v, list)}
        ray.train.report({**plain, "params": counts["total"], "teacher_forwards": built.teacher_forwards[0],
                          "final": False})

    def on_step(phase: Phase, step: int, parts: dict) -> None:
        if step % spec.log_every:
            return
        values = {k: v.item() for k, v in parts.items()}
        if tracker:
            tracker.metrics(spec.run_id, {f"train/{phase.name}/{k}": v for k, v in values.items()}, step)
        if progress:
            progress.step(phase.name, step, values["total"])

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
        "samples_per_s": sum(r["samples"] for r in history) / max(seconds, 1e-9), "world_size": world,
        "tokens_per_s": sum(r["tokens"] for r in history) / max(seconds, 1e-9),
        "worker_nodes": nodes, "layer_map": list(built.layer_map), "phases": [p.name for p in phases],
        "resumed_from_step": resume["step"] if resume else 0, "grad_accum": spec.grad_accum,
        "zero_stage": spec.deepspeed["zero_stage"], "teacher_forwards": built.teacher_forwards[0],
        "teacher_loaded": built.teacher_loaded,
    }
    _report_final(engine, built.save_tokenizer or built.tokenizer, summary, rank, spec.deepspeed["zero_stage"])


class Progress:
    """Rank 0's progress file (``PROGRESS`` in the scratch directory), which the driver's console bar reads:
    epochs done of the schedule's most, the step, the latest loss and dev score."""

    def __init__(self, path: Path, epochs: int, done: int):
        self.path, self.state = path, {"epochs": epochs, "done": done, "phase": "", "step": 0, "loss": None,
                                       "dev": None}
        self._write()

    def epoch(self, record: dict) -> None:
        self.state |= {"done": self.state["done"] + 1, "phase": record["stage"], "step": record["step"],
                       "dev": record["dev_score"]}
        self._write()

    def step(self, phase: str, step: int, loss: float) -> None:
        self.state |= {"phase": phase, "step": step, "loss": loss}
        self._write()

    def _write(self) -> None:
        write_json(self.path, self.state)


def _objectives(spec: TrainSpec, built: Built):
    rep = spec.representation

    def objective_for(phase: Phase) -> Objective:
        return Objective(
            losses=phase.losses, layer_map=built.layer_map, positions=rep["positions"], hidden_kind=rep["hidden_loss"],
            attention=rep["attention"], temperature=phase.temperature, relation_heads=rep["relation_heads"],
            relation_layer=rep["relation_layer"],
        )

    return objective_for


def _data(spec: TrainSpec, built: Built, device, objective_for, rank: int, world: int, sharded_dev: bool) -> Data:
    """Batches for ``run_schedule``: this rank's rows of the phase's training set in the epoch's order
    (``train.order``) and its share of dev, each with the teacher targets the phase needs (from the Parquet,
    or from the frozen teacher in online mode)."""
    dev_table = ray.get(spec.dev)
    dev_raw = table_batches(dev_table, DEV_BATCH)
    dev_raw = dev_raw[rank::world] if sharded_dev else dev_raw
    dev_cache: dict[Objective, list[dict]] = {}

    def with_targets(batch: dict, phase: Phase) -> dict:
        if built.teacher is not None and phase.data == "transfer":
            batch |= teacher_targets(built.teacher, batch, objective_for(phase))
        return batch

    sources = {name: blocks_of(rows, None if rows.table is None else ray.get(rows.table))
               for name, rows in spec.train_data.items()}

    def train(phase: Phase, epoch: int, skip: int):
        blocks = sources[phase.data]
        seed = (spec.seed, zlib.crc32(phase.name.encode()))  # every phase and epoch its own order
        plan = plan_epoch(blocks, seed, epoch, rank, world, spec.batch_size)
        for raw in epoch_batches(blocks, plan, skip):  # a resumed epoch skips what it already trained on
            yield with_targets(spec.role.collate(raw, built.tokenizer, spec.max_length, device), phase)

    def dev(phase: Phase) -> list[dict]:
        key = objective_for(phase)
        if key not in dev_cache:  # the teacher runs over dev once per objective, not once per epoch
            dev_cache[key] = [with_targets(spec.role.collate(r, built.tokenizer, spec.max_length, device), phase)
                              for r in dev_raw]
        return dev_cache[key]

    return Data(train=train, dev=dev, metric=spec.role.metric(dev_table, built.tokenizer, spec.max_length))


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
