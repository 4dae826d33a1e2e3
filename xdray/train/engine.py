"""The DeepSpeed side of a training job, free of Ray: the worker spec, the engine config derived from it, and
the ``run_schedule`` backend over an engine. Ray Train workers use it (``train.loop.worker_loop``), and so does
``bench/gpu_smoke.py`` on a machine without Ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from xdray.config import RepresentationConfig
from xdray.distill.units import UnitAdamW, param_groups


@dataclass
class TrainSpec:
    """Everything a worker needs, as plain data (it travels to workers inside ``train_loop_config``)."""

    init: str  # the checkpoint the role builds from: a backbone, the teacher, or the student to transfer
    stages: list[dict]
    num_labels: int
    max_length: int
    batch_size: int
    lr: float
    deepspeed: dict
    grad_accum: int
    scratch: str  # DeepSpeed checkpoints of each phase's best epoch
    dev: Any  # ObjectRef of a pyarrow table: text + label rows, or the labelled dev split with teacher targets
    train_data: dict[str, Any] = field(default_factory=dict)
    """Each training set a stage may read (``train``, ``transfer``), as ``train.order.Rows``. ``train.fit.fit``
    fills it from its ``datasets`` when it starts the workers: the driver's spec holds none (so ObjectRefs stay
    out of the run's name)."""
    role: Any = None  # a ``train.role.Role``: what the workers build, how they batch rows and score dev
    seed: int = 0
    representation: dict = field(default_factory=lambda: RepresentationConfig().model_dump())
    tracking_uri: str | None = None
    run_id: str | None = None
    trust_remote_code: bool = False
    warmup_steps: int = 0
    checkpoint_every: int | None = None
    log_every: int = 20


def deepspeed_config(spec: TrainSpec, world_size: int) -> dict:
    ds = spec.deepspeed
    zero = {"stage": ds["zero_stage"]}
    if ds["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_batch_size": spec.batch_size * world_size * spec.grad_accum,
        "train_micro_batch_size_per_gpu": spec.batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "gradient_clipping": ds["grad_clip"],
        "zero_allow_untested_optimizer": True,  # ZeRO knows torch's AdamW by its exact type, not subclasses
        "zero_force_ds_cpu_optimizer": False,  # torch's AdamW also with offload: no C++ extension to compile
        "zero_optimization": zero,
        "bf16": {"enabled": ds["precision"] == "bf16"},
        "fp16": {"enabled": ds["precision"] == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(module: torch.nn.Module, spec: TrainSpec, world_size: int):
    """A DeepSpeed engine over ``module`` with the unit-aware AdamW (``distill.units``), whose frozen groups
    ZeRO's partitioned step leaves alone."""
    import deepspeed

    optimizer = UnitAdamW(param_groups(module), lr=spec.lr)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=deepspeed_config(spec, world_size))
    return engine


class DeepSpeedBackend:
    """``run_schedule`` on a DeepSpeed engine: its optimizer keeps the unit groups, checkpoints are collective."""

    def __init__(self, engine, scratch: str, sharded_dev: bool):
        self.model, self.module, self.optimizer = engine, engine.module, engine.optimizer
        self.grad_accum = engine.gradient_accumulation_steps()
        self.scratch, self.sharded_dev = scratch, sharded_dev

    def step(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)
        self.model.step()

    def save(self, tag: str) -> None:
        self.model.save_checkpoint(self.scratch, tag=tag)

    def restore(self, tag: str) -> None:
        self.model.load_checkpoint(self.scratch, tag=tag)

    def all_reduce(self, values: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if not dist.is_initialized():
            return values
        on_device = values.to(self.model.device)  # NCCL reduces device tensors only
        dist.all_reduce(on_device, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return on_device.cpu()

    def all_reduce_dev(self, values: torch.Tensor) -> torch.Tensor:
        return self.all_reduce(values) if self.sharded_dev else values


def save_fp32(model: torch.nn.Module, directory: str) -> None:
    """An HF directory (safetensors) in float32 whatever the engine trained in: a bf16 engine holds bf16 weights,
    which would otherwise be saved, recorded as the config's dtype, and loaded and scored in bf16 on a CPU."""
    state = {k: v.detach().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.save_pretrained(directory, state_dict=state, safe_serialization=True)
    model.config.dtype = "float32"  # save_pretrained wrote the parameters' dtype
    model.config.save_pretrained(directory)
