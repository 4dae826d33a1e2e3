"""``distill``: the student, its schedule of stages and how representations are matched."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from xdray.config.base import Section, unique_names
from xdray.config.trainer import TrainerConfig


class StudentConfig(Section):
    layers: int = Field(2, ge=1, le=48)
    """Transformer blocks."""
    hidden: int = Field(128, ge=8)
    """Hidden size; must be divisible by heads."""
    heads: int = Field(2, ge=1)
    """Attention heads."""
    intermediate: int | None = Field(None, ge=8)
    """FFN width; None = 4 x hidden."""
    embedding_size: int | None = Field(None, ge=8)
    """None = hidden (a BERT student); smaller than hidden = a factorized (ALBERT-style, unshared) student."""
    init: str = "random"
    """``random``, ``teacher-layers`` (copy teacher blocks) or ``pretrained:<path or hub id>``: hidden and heads must
    match the source; an FFN narrower than the source's keeps its most important neurons (weight-norm pruning)."""
    init_layers: list[int] | None = None
    """Source blocks copied by teacher-layers/pretrained (0-based, bottom first); None = evenly spaced, top included."""
    embeddings: Literal["pca", "copy", "random"] = "pca"
    """``pca``: the teacher's word embeddings compressed to the embedding size (the paper); ``copy``: from the
    init source; ``random``."""
    freeze_embeddings: bool = False
    """Keep the word/position embeddings fixed in every stage (the paper's frozen-PCA variant)."""
    vocab: Literal["teacher", "prune"] = "teacher"
    """``teacher``: the teacher's whole vocabulary; ``prune``: only the special tokens, the single-character
    pieces and the pieces the transfer corpus and the task splits use (a multilingual teacher's embedding table is
    most of its parameters). The pruned tokenizer is saved with the student."""
    vocab_cap: int | None = Field(None, ge=16)
    """With ``prune``: at most this many pieces (specials and single characters always; then the most frequent)."""
    init_std: float | Literal["width"] = 0.02
    """Std of the randomly initialised weights (the HF config's ``initializer_range``; BERT's 0.02 by default).
    ``width``: 0.02 x sqrt(768 / hidden), BERT's value at BERT-base's width scaled to the student's. At 0.02 a
    narrow student's [CLS] state barely depends on its input at init (H64: 0.6% of its norm varies across
    inputs), a plateau at the majority class; ``width`` took every small student of the demo's schedule off it
    (docs/benchmarks.md). Opt-in until the quality benchmark has run with it: as the default it made an L1-H16
    student at lr 5e-3 numerically chaotic (ZeRO-2 and ZeRO-3 loss curves 0.6% apart)."""

    @property
    def initializer_range(self) -> float:
        return 0.02 * math.sqrt(768 / self.hidden) if self.init_std == "width" else self.init_std

    @property
    def ffn_width(self) -> int:
        return self.intermediate or 4 * self.hidden

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden

    @property
    def factorized(self) -> bool:
        return self.embedding_width < self.hidden

    @model_validator(mode="after")
    def _consistent(self) -> StudentConfig:
        if self.init_std != "width" and self.init_std <= 0:
            raise ValueError(f"init_std={self.init_std} must be positive; fix: use e.g. 0.02, or width")
        if self.hidden % self.heads:
            raise ValueError(
                f"hidden={self.hidden} is not divisible by heads={self.heads}; "
                "fix: choose heads that divide hidden (e.g. hidden/64)"
            )
        if self.embedding_width > self.hidden:
            raise ValueError(f"embedding_size={self.embedding_size} exceeds hidden={self.hidden}; fix: use <= hidden")
        if not (self.init in ("random", "teacher-layers") or re.fullmatch(r"pretrained:.+", self.init)):
            raise ValueError(
                f"init={self.init!r} is not known; fix: use random, teacher-layers or pretrained:<path or hub id>"
            )
        if self.init != "random" and self.factorized:
            raise ValueError(f"init={self.init} copies BERT blocks, which needs embedding_size == hidden; fix: "
                             "drop embedding_size or use init: random")
        if self.embeddings == "copy" and self.init == "random":
            raise ValueError("embeddings=copy needs an init source; fix: use init teacher-layers/pretrained:... or pca")
        if self.init_layers is not None and len(self.init_layers) != self.layers:
            raise ValueError(f"init_layers names {len(self.init_layers)} blocks for {self.layers} layers; "
                             "fix: give one source index per student layer")
        return self


LossName = Literal["hidden", "attention", "relations", "logits_mse", "logits_kl", "ce", "label_mse", "span_ce"]
REPRESENTATION_LOSSES = ("hidden", "attention", "relations")
TEACHER_LOSSES = ("hidden", "attention", "relations", "logits_mse", "logits_kl")


class StageConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Letters, digits, ``_ . -`` (it names MLflow metrics and checkpoints)."""
    data: Literal["transfer", "train"]
    """``transfer``: the teacher-labelled corpus; ``train``: the labeled source split."""
    loss: list[LossName]
    """One loss or a list (summed): hidden, attention, relations (representation); logits_mse, logits_kl; ce
    (labels)."""
    epochs: int = Field(1, ge=1)
    """Most epochs (per sub-stage when unfreeze is gradual)."""
    patience: int | None = Field(None, ge=1)
    """Stop after this many epochs without a better dev score; None runs every epoch. The best epoch is restored."""
    unfreeze: Literal["all", "gradual"] = "all"
    """``gradual``: one sub-stage per block, unfreezing top-down (top block first, embeddings last)."""
    monitor: Literal["auto", "dev_loss", "dev_accuracy", "dev_score"] = "auto"
    """Dev criterion; auto = dev_loss for representation-only stages, dev_accuracy otherwise; ``dev_score`` is
    a transfer task's headline metric (accuracy, entity F1 or Pearson); a token task's distillation selects on
    its entity F1 where it would on accuracy."""
    temperature: float = Field(1.0, gt=0)
    """Softmax temperature of `logits_kl` (the loss is scaled by T²)."""

    @field_validator("loss", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _loss_fits_data(self) -> StageConfig:
        if not self.loss:
            raise ValueError(f"stage '{self.name}': no loss; fix: name at least one loss")
        teacher = [x for x in self.loss if x in TEACHER_LOSSES]
        if self.data == "train" and teacher:
            raise ValueError(
                f"stage '{self.name}': loss {teacher[0]} needs teacher outputs; fix: use data: transfer or loss: ce"
            )
        if self.data == "transfer" and ({"ce", "label_mse", "span_ce"} & set(self.loss)):
            raise ValueError(f"stage '{self.name}': the transfer set has no labels; fix: use hidden or logits_* losses")
        if self.monitor == "auto":
            head = any(x not in REPRESENTATION_LOSSES for x in self.loss)
            object.__setattr__(self, "monitor", "dev_accuracy" if head else "dev_loss")
        return self


class RepresentationConfig(Section):
    """How student hidden states and attentions are matched to the teacher's (stage losses hidden/attention)."""

    layer_map: Literal["top", "uniform"] = "top"
    """``top``: the student's L+1 states ↔ the teacher's top L+1 (the paper); ``uniform``: evenly spread."""
    positions: Literal["cls", "tokens"] = "cls"
    """``cls`` for sequence tasks; ``tokens``: every non-pad token (needs teacher: online)."""
    hidden_loss: Literal["mse", "cosine"] = "mse"
    """Loss between the aligned hidden states."""
    attention: Literal["mean_heads", "relation"] = "mean_heads"
    """Head-count independent: ``mean_heads`` compares head-averaged attention maps (MSE);
    ``relation`` compares self-relation maps softmax(HH^T/sqrt(d)) of the aligned states (KL)."""
    relation_heads: int = Field(12, ge=1)
    """Loss ``relations`` (MiniLMv2): the relation heads queries, keys and values are split into; it must divide
    the student's and the teacher's hidden sizes, whatever their attention head counts."""
    relation_layer: int | None = Field(None, ge=1)
    """Loss ``relations``: the teacher layer (1-based) the student's top layer learns from; None: the teacher's
    last (MiniLMv2 takes an upper-middle layer of large teachers)."""


class DistillConfig(TrainerConfig):
    student: StudentConfig = StudentConfig()
    stages: list[StageConfig] = Field(
        default_factory=lambda: [
            StageConfig(name="hidden", data="transfer", loss="hidden", epochs=3, patience=1),
            StageConfig(name="logits", data="transfer", loss="logits_mse", epochs=1, unfreeze="gradual"),
            StageConfig(name="labels", data="train", loss="ce", epochs=1, unfreeze="gradual"),
        ],
        min_length=1,
    )
    """The schedule; the default is the paper's: representation, then logits and labels with gradual unfreezing."""
    representation: RepresentationConfig = RepresentationConfig()
    teacher_mode: Literal["offline", "online"] = "offline"
    """``offline``: targets come from the labelled Parquet (no teacher in training); ``online``: the frozen
    teacher runs inside the workers (needed for attention and token-level losses)."""
    labels: Path | None = None
    """Labelled Parquet directory; None = <output_dir>/label/data."""
    transfer_cache: Literal["auto", "memory", "stream"] = "auto"
    """How the workers get the labelled transfer set. ``memory``: read once into Ray's object store, where
    every worker indexes it (one permutation of all rows per epoch); ``stream``: each worker reads its share of
    the Parquet row groups every epoch, shuffled within windows of 16,384 rows, for sets larger than the
    object store; ``auto``: ``memory`` when the Parquet files take under an eighth of the cluster's object
    store."""
    workers: int = Field(2, ge=1)
    """Ray Train workers (each a DeepSpeed engine)."""

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        return unique_names(stages, "stage")

    @model_validator(mode="after")
    def _offline_targets_exist(self) -> DistillConfig:
        if self.teacher_mode == "online":
            return self
        if any("attention" in s.loss for s in self.stages):
            raise ValueError("loss attention needs the teacher's attention maps, which are not stored; "
                             "fix: set distill.teacher_mode: online")
        if any("relations" in s.loss for s in self.stages):
            raise ValueError("loss relations needs the teacher's queries, keys and values, which are not stored; "
                             "fix: set distill.teacher_mode: online")
        if self.representation.positions == "tokens" and self.uses_hidden:
            raise ValueError("representation.positions=tokens needs every token's teacher states, which are not "
                             "stored; fix: set distill.teacher_mode: online or positions: cls")
        return self

    @property
    def uses_hidden(self) -> bool:
        return any("hidden" in s.loss for s in self.stages)
