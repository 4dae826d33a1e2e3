"""`xdray distill`, driver side: the student's datasets (the labelled Parquet and/or the train split), checks
that the student suits the teacher and its labels, and one Ray Train job in the ``StudentRole``. Test accuracy
is measured once, at the end (``train.fit.finish_classifier``).
"""

from __future__ import annotations

import time
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
from xdray.errors import XdrayError
from xdray.label.run import check_labels
from xdray.train.fit import finish_classifier, fit, make_spec, rows_source, run_name
from xdray.train.order import Rows, read_parquet_dir


def student_data(cfg: XdrayConfig, train: LabeledSplit, dev: LabeledSplit, stages: list[dict],
                 student_layers: list[int]) -> tuple[dict, pa.Table]:
    """The training sets a distillation reads (the labelled transfer Parquet and/or the labeled train split, as
    ``train.fit`` takes them) and its dev table — with the teacher's outputs from the labelling job when targets
    come from Parquet."""
    sources = {s["data"] for s in stages}
    datasets, dev_table = {}, text_table(dev)
    if "train" in sources:
        datasets["train"] = rows_source(train.rows())
    if "transfer" in sources:
        check_labels(cfg, student_layers, any("hidden" in s["loss"] for s in stages))
        transfer = cfg.labels_dir / "transfer"
        keep = in_memory(cfg.distill.transfer_cache, transfer)
        held = ray.put(read_parquet_dir(transfer)) if keep else None
        datasets["transfer"] = Rows(table=held, parquet=str(transfer))
        if cfg.distill.teacher_mode == "offline":
            dev_table = pq.read_table(cfg.labels_dir / "dev")
    return datasets, dev_table


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
    train, dev, test = load_splits(cfg)
    out = cfg.step_dir("distill")
    dc = cfg.distill
    stages = [s.model_dump() for s in dc.stages]
    check_student_fits(cfg, dc.student, dc.uses_hidden)
    tokenizer = AutoTokenizer.from_pretrained(cfg.teacher_dir)
    extra, pieces = {}, None
    if init := init_report(dc.student, tokenizer):
        extra["student_init"] = init
        console.line(f"distill: {init['source']} embeddings cover {init['shared_tokens']} of the teacher's "
                     f"{init['teacher_tokens']} tokens ({init['vocab_coverage']:.1%}); the rest from the teacher's PCA")
    datasets, dev_table = student_data(cfg, train, dev, stages, [dc.student.layers])
    if dc.student.vocab == "prune":
        pieces, extra["vocab"] = corpus_pieces(cfg, (train, dev, test), tokenizer)
        console.line(f"distill: vocabulary pruned to {len(pieces)} of {len(tokenizer)} pieces (the data uses "
                     f"{extra['vocab']['used_pieces']}), {extra['vocab']['embedding_params_saved']:,} embedding "
                     "parameters fewer")
    with tracker.run(cfg, "distill", parent) as run_id:
        tracker.params(run_id, {"distill": dc.model_dump(mode="json"), "teacher": str(cfg.teacher_dir)})
        role = StudentRole(dc.student.model_dump(), teacher_mode=dc.teacher_mode,
                           pieces=tuple(pieces) if pieces else None)
        spec = make_spec(cfg, dc, role, str(cfg.teacher_dir), stages, max(train.labels) + 1, dev_table,
                         out / "scratch", run_id)
        t0 = time.perf_counter()
        name = run_name("distill", spec, dc, [cfg.data.train, cfg.data.dev, cfg.labels_dir / "_manifest.json"])
        result = fit(spec, dc, datasets, out / "ray", name)
        summary = finish_classifier(cfg, tracker, run_id, "distill", result, test, time.perf_counter() - t0,
                                    out / "student", log_model=True, extra=extra)
    return summary
