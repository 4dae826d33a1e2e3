"""`xdray distill`, driver side: the student's datasets (the labelled Parquet and/or the train split), checks
that the student suits the teacher and its labels, and one Ray Train job in the ``StudentRole``. The test score
is measured once, at the end (``train.fit.finish_classifier``): accuracy, entity F1 for a token task, or SQuAD
exact match and F1 for extractive QA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from xdray.common.tracking import Tracker
from xdray.config import StudentConfig, XdrayConfig
from xdray.console import console
from xdray.data.tables import LabeledSplit, load_splits, text_table
from xdray.distill.prune import corpus_pieces
from xdray.distill.role import StudentRole
from xdray.distill.student import check_student, init_report
from xdray.distill.token_layout import Layout
from xdray.errors import XdrayError
from xdray.label.run import check_labels
from xdray.train.fit import accuracy_scores, finish_classifier, fit, make_spec, rows_source, run_name
from xdray.train.order import Rows, read_parquet_dir
from xdray.transfer.tasks import TaskData, load_task


@dataclass
class SourceData:
    """The source task as a student trains on it: sequence splits, a token task's word/tag rows, or a QA task's
    (question, context, answers) examples."""

    train: list[dict]
    dev: pa.Table
    """Dev rows (text, words and tags, or QA examples), sorted by length; replaced by the labelled dev Parquet
    offline."""
    num_labels: int
    texts: list[list[str]]
    """The train, dev and test texts, for vocabulary pruning."""
    examples: list[str]
    task: TaskData | None = None
    test: LabeledSplit | None = None

    def worker_task(self) -> dict | None:
        return self.task.worker_spec() if self.task else None

    def scorer(self, cfg: XdrayConfig):
        """How the exported student is scored on test (``finish_classifier``'s ``score``)."""
        if self.task is None:
            return partial(accuracy_scores, cfg, self.test)
        return partial(task_scores, self.task, cfg.data.max_length)


def source_data(cfg: XdrayConfig) -> SourceData:
    if cfg.data.task in ("token_classification", "question_answering"):
        from xdray.export.parity import row_length, row_text

        data = load_task(cfg.source_task(), cfg.seed)
        texts = [[row_text(r) for r in rows] for rows in (data.train, data.dev, data.test)]
        return SourceData(data.train, pa.Table.from_pylist(sorted(data.dev, key=row_length)), data.num_labels, texts,
                          texts[1], task=data)
    train, dev, test = load_splits(cfg)
    texts = [list(s.texts) + list(s.pairs or []) for s in (train, dev, test)]
    return SourceData(train.rows(), text_table(dev), max(train.labels) + 1, texts, list(dev.texts), test=test)


def task_scores(data: TaskData, max_length: int, model_dir: Path) -> tuple[dict, dict]:
    """A token or QA student's test figures (entity F1 and its parts, or exact match and F1; per extra test
    split), for the summary and for MLflow."""
    from xdray.transfer.run import evaluate_model

    test = evaluate_model(model_dir, data, max_length)
    by_split = {name: evaluate_model(model_dir, data, max_length, f"test.{name}") for name in data.tests}
    summary = {"type": data.type, "metric": "f1", "test": test, "test_f1": test["f1"], **({"test_by_language": by_split} if by_split else {})}
    return summary, ({f"test_{k}": v for k, v in test.items() if k != "score"}
                     | {f"test_f1.{name}": m["f1"] for name, m in by_split.items()})


def student_data(cfg: XdrayConfig, source: SourceData, stages: list[dict],
                 student_layers: list[int]) -> tuple[dict, pa.Table, Layout]:
    """The training sets a distillation reads (the labelled transfer Parquet and/or the labeled train split, as
    ``train.fit`` takes them), its dev table — with the teacher's outputs from the labelling job when targets
    come from Parquet — and the layout of those outputs."""
    sources = {s["data"] for s in stages}
    datasets, dev_table, layout = {}, source.dev, Layout()
    if "train" in sources:
        datasets["train"] = rows_source(source.train)
    if "transfer" in sources:
        layout = check_labels(cfg, student_layers, any("hidden" in s["loss"] for s in stages))
        transfer = cfg.labels_dir / "transfer"
        keep = in_memory(cfg.distill.transfer_cache, transfer)
        held = ray.put(read_parquet_dir(transfer)) if keep else None
        datasets["transfer"] = Rows(table=held, parquet=str(transfer))
        if cfg.distill.teacher_mode == "offline":
            dev_table = pq.read_table(cfg.labels_dir / "dev")
    return datasets, dev_table, layout


def in_memory(mode: str, parquet_dir: Path) -> bool:
    """Whether the transfer set is read into the object store once rather than from its files every epoch."""
    if mode != "auto":
        return mode == "memory"
    size = sum(f.stat().st_size for f in parquet_dir.rglob("*.parquet"))
    return size * 8 < ray.cluster_resources().get("object_store_memory", 0)


def check_student_fits(cfg: XdrayConfig, student: StudentConfig, hidden: bool,
                       teacher: PretrainedConfig | None = None) -> None:
    """The student's init and depth suit the teacher (``hidden``: it trains with the hidden loss); one line,
    before any worker starts."""
    teacher = teacher or AutoConfig.from_pretrained(cfg.teacher_dir)
    check_student(student, teacher)
    if student.layers > teacher.num_hidden_layers and hidden:
        raise XdrayError(
            f"distill.student.layers={student.layers}: the hidden loss maps student layers onto the teacher's "
            f"{teacher.num_hidden_layers}; fix: use at most {teacher.num_hidden_layers} layers"
        )
    rep = cfg.distill.representation
    if any("relations" in s.loss for s in cfg.distill.stages):
        widths = {"student": student.hidden, "teacher": teacher.hidden_size}
        for who, width in widths.items():
            if width % rep.relation_heads:
                raise XdrayError(f"distill.representation.relation_heads={rep.relation_heads} does not divide the "
                                 f"{who}'s hidden size {width}; fix: use a common divisor of {widths['student']} "
                                 f"and {widths['teacher']}")
        if rep.relation_layer and rep.relation_layer > teacher.num_hidden_layers:
            raise XdrayError(f"distill.representation.relation_layer={rep.relation_layer}: the teacher has "
                             f"{teacher.num_hidden_layers} layers; fix: use 1-{teacher.num_hidden_layers} or null")


def run_distill(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    source = source_data(cfg)
    out = cfg.step_dir("distill")
    dc = cfg.distill
    stages = [s.model_dump() for s in dc.stages]
    if source.task is not None:  # a token or QA task has no accuracy: its head stages select on F1
        stages = [s | {"monitor": "dev_score"} if s["monitor"] == "dev_accuracy" else s for s in stages]
    if cfg.data.task == "question_answering":  # its labels are answer spans: ce is the span cross-entropy
        stages = [s | {"loss": ["span_ce" if x == "ce" else x for x in s["loss"]]} for s in stages]
    check_student_fits(cfg, dc.student, dc.uses_hidden)
    tokenizer = AutoTokenizer.from_pretrained(cfg.teacher_dir)
    extra, pieces = {}, None
    if init := init_report(dc.student, tokenizer):
        extra["student_init"] = init
        console.line(f"distill: {init['source']} embeddings cover {init['shared_tokens']} of the teacher's "
                     f"{init['teacher_tokens']} tokens ({init['vocab_coverage']:.1%}); the rest from the teacher's PCA")
    datasets, dev_table, layout = student_data(cfg, source, stages, [dc.student.layers])
    if dc.student.vocab == "prune":
        pieces, extra["vocab"] = corpus_pieces(cfg, source.texts, tokenizer)
        console.line(f"distill: vocabulary pruned to {len(pieces)} of {len(tokenizer)} pieces (the data uses "
                     f"{extra['vocab']['used_pieces']}), {extra['vocab']['embedding_params_saved']:,} embedding "
                     "parameters fewer")
    with tracker.run(cfg, "distill", parent) as run_id:
        tracker.params(run_id, {"distill": dc.model_dump(mode="json"), "teacher": str(cfg.teacher_dir)})
        role = StudentRole(dc.student.model_dump(), teacher_mode=dc.teacher_mode,
                           pieces=tuple(pieces) if pieces else None, task=source.worker_task(),
                           layout=layout.describe() if layout.kind != "sequence" else None)
        spec = make_spec(cfg, dc, role, str(cfg.teacher_dir), stages, source.num_labels, dev_table,
                         out / "scratch", run_id)
        t0 = time.perf_counter()
        name = run_name("distill", spec, dc, [cfg.data.train, cfg.data.dev, cfg.labels_dir / "_manifest.json"])
        result = fit(spec, dc, datasets, out / "ray", name)
        summary = finish_classifier(cfg, tracker, run_id, "distill", result, time.perf_counter() - t0,
                                    out / "student", log_model=True, score=source.scorer(cfg),
                                    examples=source.examples[:2], extra=extra)
    return summary
