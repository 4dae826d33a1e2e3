"""What every Ray Train + DeepSpeed job shares (teacher fine-tuning, distillation, search trials, transfer)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from xdray.config.base import Section


class DeepSpeedConfig(Section):
    zero_stage: Literal["auto", 0, 1, 2, 3] = "auto"
    """ZeRO stage 0-3 (3 partitions the parameters too; the export gathers them). ``auto``: 0 for one worker
    without offload (ZeRO has nothing to partition there, and its flat-buffer copies cost time), else 2."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """fp16 needs a GPU; bf16 works on CPU and GPU."""
    grad_clip: float = Field(1.0, ge=0)
    """Gradient-norm clipping (0: none)."""
    train_batch_size: int | None = Field(None, ge=1)
    """Global batch per optimizer step; None = batch_size x workers. Gradient accumulation makes up the rest, so
    it must be a multiple of batch_size x workers."""
    offload_optimizer: bool = False
    """Keep the optimizer state in CPU memory (ZeRO-Offload; needs zero_stage >= 1)."""


class TrainerConfig(Section):
    """What every Ray Train + DeepSpeed job shares (teacher fine-tuning, distillation, search trials)."""

    workers: int = Field(1, ge=1)
    """Ray Train workers (each a DeepSpeed engine)."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs each worker reserves."""
    use_gpu: bool = False
    """One GPU per worker."""
    batch_size: int = Field(32, ge=1)
    """Per-worker micro batch."""
    lr: float = Field(1e-3, gt=0)
    """Learning rate (DeepSpeed AdamW)."""
    warmup_steps: int = Field(0, ge=0)
    """Each phase's learning rate rises linearly from 0 over its first optimizer steps, then stays constant."""
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    checkpoint_every: int | None = Field(1000, ge=1)
    """Optimizer steps between checkpoints (weights, optimizer, schedule position); one is also taken at every stage
    end. None: stage ends only."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept, the best by dev accuracy (the latest is always kept too, for resuming)."""
    max_failures: int = Field(0, ge=-1)
    """Worker-group restarts from the last checkpoint after a worker dies; -1 = unlimited."""
    log_every: int = Field(20, ge=1)
    """Steps between per-loss-component metrics in MLflow."""

    @property
    def grad_accum(self) -> int:
        per_step = self.batch_size * self.workers
        return (self.deepspeed.train_batch_size or per_step) // per_step

    @property
    def zero_stage(self) -> int:
        """``deepspeed.zero_stage`` with ``auto`` resolved (what the workers run and the summary records)."""
        ds = self.deepspeed
        if ds.zero_stage != "auto":
            return ds.zero_stage
        return 0 if self.workers == 1 and not ds.offload_optimizer else 2

    @model_validator(mode="after")
    def _deepspeed_can_run(self) -> TrainerConfig:
        ds = self.deepspeed
        if ds.precision == "fp16" and not self.use_gpu:
            raise ValueError("deepspeed.precision=fp16 is not supported on CPU; fix: use bf16 or fp32")
        per_step = self.batch_size * self.workers
        if ds.train_batch_size is not None and ds.train_batch_size % per_step:
            raise ValueError(
                f"deepspeed.train_batch_size={ds.train_batch_size} is not divisible by batch_size x workers = "
                f"{self.batch_size} x {self.workers} = {per_step}; fix: use a multiple of {per_step} "
                "(the quotient is the gradient accumulation)"
            )
        if ds.offload_optimizer and ds.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs ZeRO; fix: set deepspeed.zero_stage to 1, 2 or 3")
        return self
