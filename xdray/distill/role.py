"""The student's role in the worker loop (``xdray distill`` and search trials): build a student from the teacher
(or load the one a search trial built), and keep the teacher beside it when it runs online. For a token task
(``task``) the student has a per-token head, batches carry per-token targets (``layout``) or word tags, and dev
is scored by entity F1; for extractive QA it has a start/end head, batches are windows with the teacher's start
and end logits or the answer's span, and dev is scored by SQuAD F1."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from xdray.common.hf import load_classifier
from xdray.config import StudentConfig
from xdray.distill.batches import collate
from xdray.distill.losses import layer_map
from xdray.distill.objective import DistillModule
from xdray.distill.prune import id_map, prune_tokenizer
from xdray.distill.student import build_student
from xdray.distill.token_layout import Layout
from xdray.train.engine import TrainSpec
from xdray.train.role import Built, Role, count_forwards
from xdray.transfer.metrics import split_metric
from xdray.transfer.model import qa_collate, token_collate


@dataclass(frozen=True)
class StudentRole(Role):
    student: dict  # a ``StudentConfig`` dump
    student_dir: str | None = None  # a student already built (search trials): workers never load the teacher
    teacher_mode: str = "offline"  # "online": the teacher runs in the worker on transfer stages
    pieces: tuple[int, ...] | None = None  # the teacher ids a pruned vocabulary keeps (``prune``)
    task: dict | None = None  # a token task's ``TaskData.worker_spec()``; None: sequence classification
    layout: dict | None = None  # what the labelled Parquet holds per row (``Layout.describe()``)

    @property
    def shards_dev(self) -> bool:  # entity F1 does not add up across shards
        return self.task is None

    def build(self, spec: TrainSpec) -> Built:
        student_cfg = StudentConfig(**self.student)
        kind = self.task["type"] if self.task else "classification"
        keep = self.teacher_mode == "online" and any(s["data"] == "transfer" for s in spec.stages)
        pieces = list(self.pieces) if self.pieces is not None else None
        if self.student_dir and not keep:  # only the teacher's config (and tokenizer) is read here
            student, tokenizer = load_classifier(self.student_dir, task_type=kind)
            teacher, teacher_config = None, AutoConfig.from_pretrained(spec.init)
            if pieces is not None:  # the loop reads the teacher's ids; the student's pruned tokenizer is saved
                tokenizer = AutoTokenizer.from_pretrained(spec.init)
        else:
            teacher, tokenizer = load_classifier(spec.init, trust_remote_code=spec.trust_remote_code, task_type=kind)
            student = build_student(student_cfg, teacher, spec.num_labels, spec.seed, tokenizer=tokenizer, keep=pieces,
                                    task_type=kind)
            teacher_config = teacher.config
        rep = spec.representation
        mapping = tuple(layer_map(student_cfg.layers, teacher_config.num_hidden_layers, rep["layer_map"]))
        if _uses(spec, "attention") and rep["attention"] == "mean_heads":  # fused kernels return no attention maps
            for model in (m for m in (student, teacher) if m is not None):
                model.set_attn_implementation("eager")
        states = len(mapping) if _uses(spec, "hidden") else 0
        module = DistillModule(student, teacher_config.hidden_size, states,
                               id_map=None if pieces is None else id_map(pieces, tokenizer))
        common = dict(freeze_embeddings=student_cfg.freeze_embeddings,
                      save_tokenizer=None if pieces is None else prune_tokenizer(tokenizer, pieces))
        if not keep:
            return Built(module, tokenizer, None, mapping, teacher_loaded=teacher is not None, **common)
        teacher.eval().requires_grad_(False)
        return Built(module, tokenizer, teacher, mapping, teacher_forwards=count_forwards(teacher), **common)

    def collate(self, raw: dict[str, np.ndarray], tokenizer: PreTrainedTokenizerBase, max_length: int,
                device: torch.device | str) -> dict:
        if "tags" in raw:  # a token task's labeled split: words and their tags
            return token_collate(raw, tokenizer, max_length, device)
        if "context" in raw and "input_ids" not in raw:  # a QA task's labeled split: examples, cut into windows
            return qa_collate(raw, tokenizer, max_length, device, self.task["stride"])
        return collate(raw, tokenizer, max_length, device, layout=Layout.read(self.layout))

    def metric(self, dev: pa.Table, tokenizer: PreTrainedTokenizerBase, max_length: int
               ) -> Callable[[list[torch.Tensor], list[torch.Tensor]], dict] | None:
        if self.task is None:
            return None
        return split_metric(self.task, qa_examples(dev) if self.task["type"] == "question_answering" else [],
                            tokenizer, max_length)


def qa_examples(dev: pa.Table) -> list[dict]:
    """The QA examples dev is scored on, in order: its rows (the labeled split, online), or the examples of its
    labelled windows (one per ``example_id``, in the windows' order; ``qa_windows`` cuts them the same way)."""
    if "example_id" not in dev.column_names:
        return dev.to_pylist()
    seen, rows = set(), []
    for row in dev.select(["example_id", "question", "context", "answers"]).to_pylist():
        if row["example_id"] not in seen:
            seen.add(row["example_id"])
            rows.append(row)
    return rows


def _uses(spec: TrainSpec, loss: str) -> bool:
    return any(loss in s["loss"] for s in spec.stages)
