"""Ray Train checkpoints of a DeepSpeed run: what a killed worker group or a restarted driver resumes from.

A checkpoint holds the engine's DeepSpeed state (weights, optimizer, ZeRO partitions), the current phase's best
weights so far (its early-stopping candidate), the schedule ``Position`` and every rank's RNG state. All ranks
save it collectively into the run's scratch directory (which, like every xdray output, must be storage all
nodes see), then rank 0 reports it: Ray Train copies it into the run's storage and keeps the best N by dev
accuracy, and the latest.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from xdray.common.files import read_json, write_json
from xdray.distill.schedule import Position

STATE_TAG = "state"
SCHEDULE = "schedule.json"
FINAL = "xdray_train.json"
"""Only the final checkpoint (the exported student) holds this file."""


def dev_score(history: list[dict]) -> float:
    """The score checkpoints are ranked by: the latest dev score (accuracy, or a transfer task's metric; -1
    before any)."""
    value = history[-1]["dev_score"] if history else -1.0
    return value if math.isfinite(value) else -1.0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_and_report(engine, scratch: str, pos: Position, rank: int, metrics: dict) -> None:
    """Every rank calls this (the DeepSpeed save is collective; saving under a rank-0 guard hangs, ray #56997)."""
    directory = Path(scratch) / "checkpoint"
    if rank == 0:
        shutil.rmtree(directory, ignore_errors=True)
    _barrier()
    engine.save_checkpoint(str(directory), tag=STATE_TAG)
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(rng, directory / f"rng-{rank}.pt")
    if rank == 0:
        write_json(directory / SCHEDULE, pos.state())
        if pos.best_tag:
            shutil.copytree(Path(scratch) / pos.best_tag, directory / pos.best_tag)
    _barrier()
    checkpoint = Checkpoint.from_directory(str(directory)) if rank == 0 else None
    ray.train.report({**metrics, "dev_score": dev_score(pos.history), "step": pos.step, "final": False},
                     checkpoint=checkpoint)


def restore(engine, scratch: str, rank: int) -> dict | None:
    """Load the run's latest checkpoint, if there is one: the engine state, this rank's RNG and the phase's best
    weights (back into scratch, where the schedule restores them from). Returns the schedule position's state,
    or the final summary (``{"final": ...}``) when the run had already finished."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        d = Path(d)
        if (d / FINAL).is_file():
            return {"final": read_json(d / FINAL), "checkpoint": checkpoint}
        engine.load_checkpoint(str(d), tag=STATE_TAG)
        state = read_json(d / SCHEDULE)
        rng = torch.load(d / f"rng-{rank}.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        tag = Position(**state).best_tag
        if rank == 0 and tag:
            shutil.copytree(d / tag, Path(scratch) / tag, dirs_exist_ok=True)
    _barrier()
    return state
