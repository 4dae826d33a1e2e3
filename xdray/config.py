"""One typed config tree for every xdray command; the YAML files in ``jobs/`` mirror it 1:1.

Validation happens here, before any Ray work starts, and every problem becomes one line that names the
key and the fix (``ConfigError``). Relative paths are resolved against the current directory at load time,
because Ray workers run in other directories.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xdray.errors import XdrayError


class ConfigError(XdrayError):
    """A config that cannot run; the message is one line naming the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(_Section):
    address: str | None = None
    """Ray cluster address (``auto``, ``ray://host:10001``); None starts a local Ray instance."""
    num_cpus: int | None = Field(None, ge=1)
    """Logical CPUs of a local instance; None = max(4, cores) so Ray Data tasks are not starved by workers."""


class MlflowConfig(_Section):
    tracking_uri: str | None = None
    """None = $MLFLOW_TRACKING_URI if set, else a SQLite store at <output_dir>/mlflow.db (artifacts beside it)."""
    experiment: str = "xdray"


CORPUS_FORMATS = ("text", "jsonl", "csv", "tsv", "parquet", "hf_disk")
_SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
             ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


class TransferSource(_Section):
    """One unlabeled corpus. In YAML a bare path is short for ``{path: ...}``."""

    path: Path | None = None
    """A file, or a directory (of Parquet files, or saved with ``datasets``' ``save_to_disk``)."""
    hub: str | None = None
    """A Hugging Face Hub dataset name instead of a path (needs network; streamed, never fully downloaded)."""
    format: Literal["auto", "text", "jsonl", "csv", "tsv", "parquet", "hf_disk"] = "auto"
    """``auto``: from the suffix (.txt .jsonl/.json .csv .tsv .parquet) or the directory's contents."""
    text_column: str = "text"
    pair_column: str = "text_pair"
    """Second sentence (``data.pairs``); text files hold ``text<TAB>text_pair`` lines instead."""
    header: bool = True
    """CSV/TSV: the first row names the columns; without one, columns are 0-based indices (``"0"``, ``"1"``)."""
    split: str = "train"
    """Hub datasets and ``DatasetDict`` directories: which split to read."""
    subset: str | None = None
    """Hub datasets: the configuration name."""
    name: str | None = None
    """Namespace of this source's row ids when ``data.cleaning.dedupe`` is off; default: the file name or hub name."""

    @model_validator(mode="after")
    def _one_origin(self) -> TransferSource:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of path and hub; fix: e.g. {path: corpus.txt} or {hub: imdb}")
        if self.hub is not None and self.format not in ("auto",):
            raise ValueError("format applies to paths only; fix: remove format for a hub dataset")
        return self

    @property
    def key(self) -> str:
        return self.name or (self.hub if self.hub is not None else self.path.name)

    @property
    def kind(self) -> str:
        """The reader to use: ``hub`` or one of ``CORPUS_FORMATS``."""
        if self.hub is not None:
            return "hub"
        if self.format != "auto":
            return self.format
        if self.path.is_dir():
            saved = any((self.path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))
            return "hf_disk" if saved else "parquet"
        return _SUFFIXES.get(self.path.suffix.lower(), "text")


class CleaningConfig(_Section):
    """What the labelling job does to the transfer corpus before the teacher sees it. Always: strip whitespace,
    drop empty rows, replace undecodable bytes (U+FFFD); every kind is counted in the label summary."""

    dedupe: bool = True
    """Keep one row per exact text (across sources); the row id is then derived from the text alone."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """Rows longer than ``data.max_length`` tokens: truncated to it, or dropped."""


class DataConfig(_Section):
    train: Path
    dev: Path
    test: Path
    """Labeled splits: TSV files with a header and columns ``text`` and ``label``."""
    transfer: list[TransferSource] = Field(min_length=1)
    """Unlabeled transfer corpora, mixed in one run: paths (text, JSON lines, CSV/TSV, Parquet, ``save_to_disk``
    directories) or ``{hub: name}``."""
    pairs: bool = False
    """Sentence-pair inputs: labeled splits carry a ``text_pair`` column, and so do the transfer sources."""
    max_length: int = Field(64, ge=8, le=4096)
    max_train_rows: int | None = Field(None, ge=1)
    """Subsample the labeled train split (fixed seed) to bound run time; None uses all rows."""
    max_transfer_rows: int | None = Field(None, ge=1)
    """Keep this many cleaned transfer rows, a fixed-seed sample by id (memory grows with it, not the corpus)."""
    cleaning: CleaningConfig = CleaningConfig()

    @field_validator("transfer", mode="before")
    @classmethod
    def _bare_paths(cls, value: Any) -> Any:
        if isinstance(value, (str, Path, dict)):
            value = [value]
        return [{"path": v} if isinstance(v, (str, Path)) else v for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        keys = [s.key for s in self.transfer]
        if len(keys) != len(set(keys)):
            raise ValueError(f"transfer sources share the name {sorted({k for k in keys if keys.count(k) > 1})}; "
                             "fix: give each a distinct name")
        return self


class DeepSpeedConfig(_Section):
    zero_stage: int = Field(2, ge=0, le=3)
    """ZeRO stage 0-3 (3 partitions the parameters too; the export gathers them)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """fp16 needs a GPU; bf16 works on CPU and GPU."""
    grad_clip: float = Field(1.0, ge=0)
    train_batch_size: int | None = Field(None, ge=1)
    """Global batch per optimizer step; None = batch_size x workers. Gradient accumulation makes up the rest, so
    it must be a multiple of batch_size x workers."""
    offload_optimizer: bool = False
    """Keep the optimizer state in CPU memory (ZeRO-Offload; needs zero_stage >= 1)."""


class TrainerConfig(_Section):
    """What every Ray Train + DeepSpeed job shares (teacher fine-tuning, distillation, search trials)."""

    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    batch_size: int = Field(32, ge=1)
    """Per-worker micro batch."""
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0)
    """Each phase's learning rate rises linearly from 0 over its first steps, then stays constant."""
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    checkpoint_every: int | None = Field(1000, ge=1)
    """Steps between checkpoints (weights, optimizer, schedule position); one is also taken at every stage
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
        if self.checkpoint_every and self.checkpoint_every % self.grad_accum:
            raise ValueError(
                f"checkpoint_every={self.checkpoint_every} falls inside a gradient accumulation of {self.grad_accum} "
                f"micro-batches; fix: use a multiple of {self.grad_accum}"
            )
        return self


class TeacherConfig(TrainerConfig):
    backbone: str
    """A local HF encoder directory or a hub id; a classification head is added and fine-tuned."""
    epochs: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0)
    trust_remote_code: bool = False


class LabelConfig(_Section):
    teacher: Path | None = None
    """Teacher directory to label with; None = <output_dir>/teacher/model."""
    batch_size: int = Field(64, ge=1)
    """Rows per teacher forward; batches hold rows of similar length (sorted within a chunk)."""
    chunk_rows: int = Field(1024, ge=1)
    """Rows per Parquet shard: the unit of work of an actor, of resume, and the length-sorting window (larger
    for big GPU batches; smaller keeps actors evenly busy at the end of a run)."""
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    """GPUs per actor (fractions share a GPU); 0 runs on CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Teacher forward: ``auto`` = bf16 autocast on GPU, fp32 on CPU."""
    logits_dtype: Literal["float32", "float16"] = "float32"
    hidden_states: Literal["auto", "all", "none"] = "auto"
    """Teacher [CLS] states stored (float16) next to the logits: ``auto`` = the layers that distill and search
    map to when a stage uses the hidden loss offline; ``all``; ``none``."""


class StudentConfig(_Section):
    layers: int = Field(2, ge=1, le=48)
    hidden: int = Field(128, ge=8)
    heads: int = Field(2, ge=1)
    intermediate: int | None = Field(None, ge=8)
    """FFN width; None = 4 x hidden."""
    embedding_size: int | None = Field(None, ge=8)
    """None = hidden (a BERT student); smaller than hidden = a factorized (ALBERT-style, unshared) student."""
    init: str = "random"
    """``random``, ``teacher-layers`` (copy teacher blocks; widths must match) or ``pretrained:<path or hub id>``."""
    init_layers: list[int] | None = None
    """Source blocks copied by teacher-layers/pretrained (0-based, bottom first); None = evenly spaced, top included."""
    embeddings: Literal["pca", "copy", "random"] = "pca"
    """``pca``: the teacher's word embeddings compressed to the embedding size (the paper); ``copy``: from the
    init source; ``random``."""
    freeze_embeddings: bool = False
    """Keep the word/position embeddings fixed in every stage (the paper's frozen-PCA variant)."""

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden

    @property
    def factorized(self) -> bool:
        return self.embedding_width < self.hidden

    @model_validator(mode="after")
    def _consistent(self) -> StudentConfig:
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


LossName = Literal["hidden", "attention", "logits_mse", "logits_kl", "ce", "label_mse"]
REPRESENTATION_LOSSES = ("hidden", "attention")
TEACHER_LOSSES = ("hidden", "attention", "logits_mse", "logits_kl")


class StageConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Letters, digits, ``_ . -`` (it names MLflow metrics and checkpoints)."""
    data: Literal["transfer", "train"]
    """``transfer``: the teacher-labelled corpus; ``train``: the labeled source split."""
    loss: list[LossName]
    """One loss or a list (summed): hidden, attention (representation); logits_mse, logits_kl; ce (labels)."""
    epochs: int = Field(1, ge=1)
    """Most epochs (per sub-stage when unfreeze is gradual)."""
    patience: int | None = Field(None, ge=1)
    """Stop after this many epochs without a better dev score; None runs every epoch. The best epoch is restored."""
    unfreeze: Literal["all", "gradual"] = "all"
    """``gradual``: one sub-stage per block, unfreezing top-down (top block first, embeddings last)."""
    monitor: Literal["auto", "dev_loss", "dev_accuracy", "dev_score"] = "auto"
    """Dev criterion; auto = dev_loss for representation-only stages, dev_accuracy otherwise; ``dev_score`` is
    a transfer task's headline metric (accuracy, entity F1 or Pearson)."""
    temperature: float = Field(1.0, gt=0)

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
        if self.data == "transfer" and ({"ce", "label_mse"} & set(self.loss)):
            raise ValueError(f"stage '{self.name}': the transfer set has no labels; fix: use hidden or logits_* losses")
        if self.monitor == "auto":
            head = any(x not in REPRESENTATION_LOSSES for x in self.loss)
            object.__setattr__(self, "monitor", "dev_accuracy" if head else "dev_loss")
        return self


class RepresentationConfig(_Section):
    """How student hidden states and attentions are matched to the teacher's (stage losses hidden/attention)."""

    layer_map: Literal["top", "uniform"] = "top"
    """``top``: the student's L+1 states ↔ the teacher's top L+1 (the paper); ``uniform``: evenly spread."""
    positions: Literal["cls", "tokens"] = "cls"
    """``cls`` for sequence tasks; ``tokens``: every non-pad token (needs teacher: online)."""
    hidden_loss: Literal["mse", "cosine"] = "mse"
    attention: Literal["mean_heads", "relation"] = "mean_heads"
    """Head-count independent: ``mean_heads`` compares head-averaged attention maps (MSE);
    ``relation`` compares self-relation maps softmax(HH^T/sqrt(d)) of the aligned states (KL, MiniLM-style)."""


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
    """How the workers get the labelled transfer set each epoch. ``memory``: read once into Ray's object store
    (a re-read costs seconds of start-up every epoch); ``stream``: read from the files again every epoch, for
    sets larger than the object store; ``auto``: ``memory`` when the Parquet files take under an eighth of the
    cluster's object store."""
    workers: int = Field(2, ge=1)

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        return _unique_names(stages, "stage")

    @model_validator(mode="after")
    def _offline_targets_exist(self) -> DistillConfig:
        if self.teacher_mode == "online":
            return self
        if any("attention" in s.loss for s in self.stages):
            raise ValueError("loss attention needs the teacher's attention maps, which are not stored; "
                             "fix: set distill.teacher_mode: online")
        if self.representation.positions == "tokens" and self.uses_hidden:
            raise ValueError("representation.positions=tokens needs every token's teacher states, which are not "
                             "stored; fix: set distill.teacher_mode: online or positions: cls")
        return self

    @property
    def uses_hidden(self) -> bool:
        return any("hidden" in s.loss for s in self.stages)


SEARCH_DIMENSIONS = ("layers", "hidden", "heads", "ffn_ratio", "embedding_factor", "lr", "schedule")
OBJECTIVES = {"dev_accuracy": "max", "latency_ms": "min", "params": "min"}


class SearchSpace(_Section):
    """The choices of each dimension; a trial takes one of each. Heads are kept valid: a trial is only offered
    the head counts that divide its hidden size."""

    layers: list[int] = Field([1, 2], min_length=1)
    hidden: list[int] = Field([64, 128], min_length=1)
    heads: list[int] = Field([1, 2], min_length=1)
    ffn_ratio: list[float] = Field([4.0], min_length=1)
    """FFN width = ratio x hidden."""
    embedding_factor: list[float] = Field([1.0], min_length=1)
    """Embedding size = factor x hidden; below 1 the student has factorized (ALBERT-style) embeddings."""
    lr: list[float] | None = None
    """Learning rates to choose from; None = distill.lr."""
    schedules: dict[str, list[StageConfig]] | None = None
    """Named schedules to choose from (each a list of stages, as distill.stages); None = distill.stages."""

    @field_validator("layers", "hidden", "heads")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError(f"values must be positive integers, got {values}; fix: use integers >= 1")
        return values

    @model_validator(mode="after")
    def _every_choice_builds(self) -> SearchSpace:
        for h in self.hidden:
            if not self.heads_for(h):
                raise ValueError(f"no head count in heads={self.heads} divides hidden={h}; "
                                 f"fix: add a divisor of {h} to search.space.heads (e.g. {max(1, h // 64)})")
            for f in self.embedding_factor:
                if not 0 < f <= 1 or round(f * h) < 8:
                    raise ValueError(f"embedding_factor={f} with hidden={h} gives embedding size {round(f * h)}; "
                                     "fix: use factors in (0, 1] that keep it >= 8")
            for r in self.ffn_ratio:
                if round(r * h) < 8:
                    raise ValueError(f"ffn_ratio={r} with hidden={h} gives an FFN width below 8; fix: raise ffn_ratio")
        if self.lr is not None and (not self.lr or any(v <= 0 for v in self.lr)):
            raise ValueError(f"lr choices must be positive, got {self.lr}; fix: e.g. [1.0e-3, 3.0e-3]")
        if self.schedules is not None and not all(self.schedules.values()):
            raise ValueError("every schedule needs at least one stage; fix: remove the empty schedule")
        return self

    def heads_for(self, hidden: int) -> list[int]:
        return [a for a in self.heads if hidden % a == 0]


class LatencyConfig(_Section):
    """How student latency is measured (per sentence, on dev sentences)."""

    device: Literal["cpu", "cuda"] = "cpu"
    batch_sizes: list[int] = Field([1, 32], min_length=1)
    """Each is measured and recorded (``latency_ms_b<N>``); the first is the objective ``latency_ms``."""
    threads: int = Field(1, ge=1)
    """CPU threads (and CPUs reserved for the measurement)."""
    sentences: int = Field(64, ge=1)


class BudgetConfig(_Section):
    """Limits for the chosen student: the most accurate completed trial within them is exported."""

    latency_ms: float | None = Field(None, gt=0)
    params: int | None = Field(None, ge=1)


class AshaConfig(_Section):
    """ASHA early stopping (single-objective search): trials are compared after each dev evaluation."""

    grace_period: int = Field(1, ge=1)
    """Dev evaluations (epochs) before a trial can be stopped."""
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int = Field(100, ge=1)
    """Epochs after which any trial stops; keep it above the schedule's epoch count."""


class SearchConfig(_Section):
    space: SearchSpace = SearchSpace()
    objectives: list[Literal["dev_accuracy", "latency_ms", "params"]] = ["dev_accuracy", "latency_ms"]
    """``[dev_accuracy]``: single objective (ASHA can stop weak trials); with ``latency_ms`` or ``params``:
    multi-objective (Optuna), whose result is a Pareto front."""
    num_samples: int = Field(8, ge=1)
    """Trials to run."""
    sampler: Literal["tpe", "random"] = "tpe"
    """Optuna sampler (seeded with ``seed``); tpe handles one or two objectives."""
    points_to_evaluate: list[dict[str, Any]] = []
    """Trials to run first, e.g. a known-good student: mappings of dimensions (layers, hidden, heads, ffn_ratio,
    embedding_factor, lr, schedule) to values from the space; the rest are sampled."""
    asha: AshaConfig | None = None
    latency: LatencyConfig = LatencyConfig()
    budget: BudgetConfig = BudgetConfig()
    workers_per_trial: int = Field(1, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    """None = as many as the cluster's CPUs (or GPUs) fit at workers_per_trial each; the rest queue."""

    @model_validator(mode="after")
    def _searchable(self) -> SearchConfig:
        obj = self.objectives
        if not obj or obj[0] != "dev_accuracy" or len(obj) > 2 or len(set(obj)) != len(obj):
            raise ValueError(f"objectives={obj}; fix: use [dev_accuracy] or [dev_accuracy, latency_ms|params]")
        if self.asha is not None and len(obj) > 1:
            raise ValueError("asha stops trials by one metric; fix: use objectives: [dev_accuracy] or remove asha")
        for point in self.points_to_evaluate:
            self._check_point(point)
        return self

    def _check_point(self, point: dict[str, Any]) -> None:
        sp = self.space
        choices = {"layers": sp.layers, "hidden": sp.hidden, "heads": sp.heads, "ffn_ratio": sp.ffn_ratio,
                   "embedding_factor": sp.embedding_factor, "lr": sp.lr, "schedule": list(sp.schedules or [])}
        for key, value in point.items():
            if key not in SEARCH_DIMENSIONS:
                raise ValueError(f"point {point}: unknown dimension {key}; fix: use {', '.join(SEARCH_DIMENSIONS)}")
            if not choices[key] or value not in choices[key]:
                raise ValueError(f"point {point}: {key}={value} is not among the space's choices {choices[key]}; "
                                 f"fix: add it to search.space.{'schedules' if key == 'schedule' else key}")
        if "heads" in point and point.get("hidden", sp.hidden[0]) % point["heads"]:
            raise ValueError(f"point {point}: heads must divide hidden; fix: choose another heads value")
        if "heads" in point and "hidden" not in point:
            raise ValueError(f"point {point}: heads depends on hidden; fix: give hidden too")


TASK_TYPES = ("classification", "pair_classification", "token_classification", "regression")
GLUE_PRESETS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
TASK_FORMATS = ("auto", "tsv", "csv", "jsonl", "parquet", "hf_disk", "conll")


class TransferTask(_Section):
    """One target task: labeled train/dev/test splits (files, ``save_to_disk`` directories, or a GLUE preset)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Names the task's output directory and MLflow run."""
    type: Literal["classification", "pair_classification", "token_classification", "regression"] | None = None
    """Required unless a preset gives it."""
    preset: str | None = None
    """``glue/<task>`` (needs network): the GLUE train split minus a seeded dev holdout, GLUE validation as test."""
    train: Path | None = None
    dev: Path | None = None
    test: Path | None = None
    format: Literal["auto", "tsv", "csv", "jsonl", "parquet", "hf_disk", "conll"] = "auto"
    """``auto``: from the suffix (.tsv .csv .jsonl/.json .parquet .conll/.bio) or a ``save_to_disk`` directory."""
    text_column: str = "text"
    pair_column: str = "text_pair"
    label_column: str = "label"
    tokens_column: str = "tokens"
    """Token tasks: a list of words (or one space-separated string)."""
    tags_column: str = "tags"
    """Token tasks: one tag per word (BIO names like ``B-PER``, or ids into ``labels``)."""
    labels: list[str] | None = None
    """Class (or tag) names in id order; None = the names found in train (sorted), or 0..N-1 for integer labels."""
    splits: dict[str, str] = {"train": "train", "dev": "validation", "test": "test"}
    """``save_to_disk`` DatasetDict directories: which stored split each role reads."""
    max_train_rows: int | None = Field(None, ge=1)
    """Subsample train (fixed seed) to bound run time."""
    max_length: int = Field(128, ge=8, le=4096)

    @model_validator(mode="after")
    def _complete(self) -> TransferTask:
        where = f"task '{self.name}'"
        if self.preset is not None:
            family, _, name = self.preset.partition("/")
            if family != "glue" or name not in GLUE_PRESETS:
                raise ValueError(f"{where}: preset {self.preset!r} is not known; fix: use glue/<one of "
                                 f"{', '.join(GLUE_PRESETS)}> or give train/dev/test paths")
            if any(p is not None for p in (self.train, self.dev, self.test)):
                raise ValueError(f"{where}: give a preset or train/dev/test paths, not both; fix: remove one")
            return self
        missing = [k for k in ("train", "dev", "test") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"{where}: {', '.join(missing)} missing; fix: give train, dev and test paths (or a preset)")
        if self.type is None:
            raise ValueError(f"{where}: type missing; fix: set type to one of {', '.join(TASK_TYPES)}")
        if self.format == "conll" and self.type != "token_classification":
            raise ValueError(f"{where}: format conll holds token tags; fix: set type: token_classification")
        if self.type == "regression" and self.labels is not None:
            raise ValueError(f"{where}: a regression task has no class names; fix: remove labels")
        return self


class TransferConfig(TrainerConfig):
    """``xdray transfer``: fine-tune a student (or any HF encoder) on each task, early-stopping on dev."""

    student: str | None = None
    """A local HF directory or hub id; None = the distilled student, <output_dir>/distill/student."""
    tasks: list[TransferTask] = Field(min_length=1)
    epochs: int = Field(3, ge=1)
    patience: int | None = Field(2, ge=1)
    """Stop after this many epochs without a better dev score; the best epoch's weights are kept."""
    lr: float = Field(1e-4, gt=0)
    trust_remote_code: bool = False
    latency_sentences: int = Field(64, ge=1)
    """Test sentences timed for the CPU latency in the summary (batch 1, 1 thread)."""

    @field_validator("tasks")
    @classmethod
    def _unique_task_names(cls, tasks: list[TransferTask]) -> list[TransferTask]:
        return _unique_names(tasks, "task")


class XdrayConfig(_Section):
    output_dir: Path
    seed: int = 0
    ray: RayConfig = RayConfig()
    mlflow: MlflowConfig = MlflowConfig()
    data: DataConfig | None = None
    """The source task and transfer corpora: required by teacher, label, distill, search and the pipeline."""
    teacher: TeacherConfig | None = None
    """Required with ``data``."""
    label: LabelConfig = LabelConfig()
    distill: DistillConfig = DistillConfig()
    search: SearchConfig = SearchConfig()
    transfer: TransferConfig | None = None
    """Target tasks for ``xdray transfer`` (and the pipeline's last step when present)."""

    @model_validator(mode="before")
    @classmethod
    def _has_a_job(cls, raw: Any) -> Any:
        """A config distils (data + teacher), transfers, or both; anything else is missing its core."""
        if isinstance(raw, dict) and not raw.get("transfer"):
            for key in ("data", "teacher"):
                if raw.get(key) is None:
                    raise ValueError(f"{key}: required key is missing; fix: add it to the config (see "
                                     "jobs/quickstart.yaml), or a transfer section for a transfer-only job")
        return raw

    @model_validator(mode="after")
    def _resolve_paths(self) -> XdrayConfig:
        """Make every path absolute now: Ray workers and Tune trials run in other working directories."""
        object.__setattr__(self, "output_dir", self.output_dir.expanduser().resolve())
        d = self.data
        for key in ("train", "dev", "test"):
            if d is not None:
                object.__setattr__(d, key, getattr(d, key).expanduser().resolve())
            for task in self.transfer.tasks if self.transfer else ():
                if getattr(task, key) is not None:
                    object.__setattr__(task, key, getattr(task, key).expanduser().resolve())
        for source in d.transfer if d is not None else ():
            if source.path is not None:
                object.__setattr__(source, "path", source.path.expanduser().resolve())
        if self.label.teacher is not None:
            object.__setattr__(self.label, "teacher", self.label.teacher.expanduser().resolve())
        if self.distill.labels is not None:
            object.__setattr__(self.distill, "labels", self.distill.labels.expanduser().resolve())
        if self.teacher is not None and looks_local(self.teacher.backbone):
            object.__setattr__(self.teacher, "backbone", str(Path(self.teacher.backbone).expanduser().resolve()))
        if self.transfer is not None and self.transfer.student and looks_local(self.transfer.student):
            object.__setattr__(self.transfer, "student", str(Path(self.transfer.student).expanduser().resolve()))
        return self

    @model_validator(mode="after")
    def _search_trials_can_run(self) -> XdrayConfig:
        """Trials train with the distill settings on ``workers_per_trial`` workers: check that too, up front."""
        if self.data is None:
            return self
        try:
            self.search_trainer()
        except ValidationError as e:
            raise ValueError(f"search.workers_per_trial={self.search.workers_per_trial}: "
                             f"{_one_line(e).removeprefix('deepspeed.')}") from None
        from xdray.search.space import every_candidate  # the space's students, checked as distill.student is

        try:
            every_candidate(self)
        except ValidationError as e:
            raise ValueError(f"search.space with distill.student gives an invalid student: {_one_line(e)}") from None
        return self

    def search_trainer(self) -> DistillConfig:
        return DistillConfig.model_validate({**self.distill.model_dump(), "workers": self.search.workers_per_trial})

    def search_schedules(self) -> dict[str, list[StageConfig]]:
        """The schedules a search trial may run: ``search.space.schedules``, else distill's own."""
        return self.search.space.schedules or {"distill": self.distill.stages}

    @property
    def uses_hidden(self) -> bool:
        """Whether any distillation (distill or a search schedule) trains with the hidden loss."""
        stages = [s for stages in self.search_schedules().values() for s in stages] + list(self.distill.stages)
        return any("hidden" in s.loss for s in stages)

    def step_dir(self, step: str) -> Path:
        return self.output_dir / step

    @property
    def teacher_dir(self) -> Path:
        return self.label.teacher or self.step_dir("teacher") / "model"

    @property
    def labels_dir(self) -> Path:
        return self.distill.labels or self.step_dir("label") / "data"

    @property
    def transfer_student(self) -> str:
        return (self.transfer.student if self.transfer else None) or str(self.step_dir("distill") / "student")


def _unique_names(items: list, what: str) -> list:
    names = [item.name for item in items]
    if len(names) != len(set(names)):
        raise ValueError(f"{what} names must be unique, got {names}; fix: rename the repeated {what}")
    return items


def looks_local(name: str) -> bool:
    """Hub ids look like ``org/name``; anything that exists or starts like a path is local."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


# ---------------------------------------------------------------------------------------------------------
# Loading, overrides and one-line errors


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> XdrayConfig:
    """Read YAML, apply ``a.b=c`` overrides (values parsed as YAML), validate into an ``XdrayConfig``."""
    return validate_config(load_raw(path, overrides))


def load_raw(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML mapping with overrides applied, paths untouched (``xdray submit`` ships it as it is)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; fix: pass the path of a YAML file such as jobs/quickstart.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}; fix: correct the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections; fix: see jobs/quickstart.yaml")
    for item in overrides:
        _apply_override(raw, item)
    return raw


def validate_config(raw: dict[str, Any]) -> XdrayConfig:
    try:
        return XdrayConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", key):
        raise ConfigError(f"bad override '{item}'; fix: write --set section.key=value (e.g. distill.workers=1)")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"bad override '{item}': {part} is not a section; fix: check the key path")
        node = node.setdefault(part, {})
    parsed = yaml.safe_load(value) if value else None
    if isinstance(node, list) and leaf.isdigit() and int(leaf) < len(node):
        node[int(leaf)] = parsed
    elif isinstance(node, dict):
        node[leaf] = parsed
    else:
        raise ConfigError(f"bad override '{item}': cannot set {leaf} there; fix: check the key path")


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key; fix: remove it or correct its spelling (see the config reference in README.md)"
    if kind == "missing":
        return f"{loc}: required key is missing; fix: add it to the config (see jobs/quickstart.yaml)"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    got = err.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
    return f"{loc}: {msg}{shown}; fix: give a valid value for {loc or 'the config'}"
