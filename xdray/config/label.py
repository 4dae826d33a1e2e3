"""``teacher`` and ``label``: fine-tune the teacher, then label the transfer corpus with it once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from xdray.config.base import Section
from xdray.config.trainer import TrainerConfig


class TeacherConfig(TrainerConfig):
    backbone: str
    """A local HF encoder directory or a hub id; a classification head is added and fine-tuned."""
    epochs: int = Field(1, ge=1)
    """Fine-tuning epochs."""
    lr: float = Field(5e-5, gt=0)
    """Fine-tuning learning rate."""
    trust_remote_code: bool = False
    """Only if you trust the model's code."""


class LabelConfig(Section):
    teacher: Path | None = None
    """Teacher directory to label with; None = <output_dir>/teacher/model."""
    batch_size: int = Field(64, ge=1)
    """Rows per teacher forward; batches hold rows of similar length (sorted within a chunk)."""
    chunk_rows: int = Field(1024, ge=1)
    """Rows per Parquet shard: the unit of work of an actor, of resume, and the length-sorting window (larger
    for big GPU batches; smaller keeps actors evenly busy at the end of a run)."""
    corpus_segment_mb: float | None = Field(None, gt=0)
    """None: the corpus is read, cleaned, deduped and chunked serially in the driver (about 200k rows/s per
    core). A size: text sources are cut into segments of about this many MiB (other sources stay whole), each
    cleaned in a Ray task (1 CPU), deduped across the corpus by id in the driver: for corpora that one core
    cannot clean ahead of a large actor pool. Same rows, ids and counts; other chunk boundaries."""
    actors: int = Field(1, ge=1)
    """Teacher actors in the Ray Data actor pool."""
    cpus_per_actor: float = Field(1.0, gt=0)
    """CPUs each actor reserves."""
    gpus_per_actor: float = Field(0.0, ge=0)
    """GPUs per actor (fractions share a GPU); 0 runs on CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Teacher forward: ``auto`` = bf16 autocast on GPU, fp32 on CPU."""
    logits_dtype: Literal["float32", "float16"] = "float32"
    """How logits are stored in the Parquet."""
    token_positions: Literal["first_subword", "all"] = "first_subword"
    """Token tasks: whose logits are stored, each word's first sub-word (what the task is scored on) or every
    sub-word of a word."""
    token_top_k: int | None = Field(None, ge=1)
    """Token tasks: store only the k largest logits of each token, with their tag ids and the log-sum-exp of all
    (KL over the k tags and "the rest" stays exact); None, or k ≥ the number of tags, stores every logit."""
    hidden_states: Literal["auto", "all", "none"] = "auto"
    """Teacher [CLS] states stored (float16) next to the logits: ``auto`` = the layers that distill and search
    map to when a stage uses the hidden loss offline; ``all``; ``none``."""
