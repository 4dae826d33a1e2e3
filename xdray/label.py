"""`xdray label`: Ray Data streams the transfer corpus (and the dev split) through a pool of teacher actors and
writes Parquet, once; every distillation stage and search trial reads it.

Output (``<output_dir>/label/data``, schema version 2):
- ``transfer/*.parquet``: ``id`` (string, content-derived), ``input_ids`` (list<int32>, the teacher tokenizer's
  ids without padding), ``token_type_ids`` (list<int8>, sentence pairs only), ``logits`` (list<float32>) and
  ``hidden_<k>`` (list<float16>: the teacher's [CLS] state after layer k, 0 = embeddings) for the layers the
  hidden-state loss maps to;
- ``dev/*.parquet``: the same for the dev split plus its ``label``, so stages on teacher targets early-stop on
  a dev loss without running the teacher;
- ``_manifest.json``: teacher, max length, row counts, stored hidden layers, schema version.
Rows are written to a temporary directory that is renamed into place only when complete, so a crash never
leaves a partial dataset that looks whole.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from transformers import AutoConfig

from xdray.config import XdrayConfig
from xdray.data.tables import load_splits, read_transfer, split_pair, stable_id
from xdray.distill.batches import model_inputs
from xdray.distill.losses import layer_map
from xdray.errors import XdrayError
from xdray.runtime import replace_dir, staging_dir, write_summary
from xdray.tracking import Tracker

SCHEMA_VERSION = 2
ROWS_PER_BLOCK = 256


class TeacherPredictor:
    """A Ray Data actor: loads the teacher once, then labels batches."""

    def __init__(self, teacher_dir: str, max_length: int, threads: int, hidden_layers: list[int] = ()):
        from xdray.models.teacher import load_classifier

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU when Ray gave one
        self.model, self.tokenizer = load_classifier(teacher_dir)
        self.model.to(self.device).eval()
        self.max_length, self.hidden_layers = max_length, hidden_layers

    @torch.inference_mode()
    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        pairs = batch.column("text_pair").to_pylist() if "text_pair" in batch.column_names else None
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in model_inputs(enc).items()}
        out = self.model(**inputs, output_hidden_states=bool(self.hidden_layers))
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        columns = {name: batch.column(name) for name in ("id", "label") if name in batch.column_names}
        columns["input_ids"] = _ragged(enc["input_ids"], lengths, pa.int32())
        if pairs is not None:
            columns["token_type_ids"] = _ragged(enc["token_type_ids"], lengths, pa.int8())
        columns["logits"] = pa.array(out.logits.float().cpu().numpy().tolist(), type=pa.list_(pa.float32()))
        for k in self.hidden_layers:
            cls = out.hidden_states[k][:, 0].half().cpu().numpy()
            columns[f"hidden_{k}"] = pa.array(list(cls), type=pa.list_(pa.float16()))
        return pa.table(columns)


def _ragged(padded: torch.Tensor, lengths: list[int], kind: pa.DataType) -> pa.Array:
    rows = padded.numpy()
    return pa.array([row[:n].tolist() for row, n in zip(rows, lengths)], type=pa.list_(kind))


def check_labels(cfg: XdrayConfig, student_layers: list[int]) -> None:
    """Refuse labelled data that does not fit this distillation, before any worker starts."""
    path = cfg.labels_dir / "_manifest.json"
    manifest = json.loads(path.read_text())
    relabel = "fix: relabel with `xdray label`"
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise XdrayError(f"distill.labels: {path} has schema {manifest.get('schema_version')}, this xdray reads "
                         f"{SCHEMA_VERSION}; {relabel}")
    if Path(manifest["teacher"]) != cfg.teacher_dir:
        raise XdrayError(
            f"distill.labels: {cfg.labels_dir} was labelled by {manifest['teacher']}, not {cfg.teacher_dir}; "
            f"{relabel} or point label.teacher at that teacher"
        )
    if cfg.distill.teacher_mode == "offline" and cfg.distill.uses_hidden:
        need = hidden_layers_needed(cfg, manifest["teacher_layers"], student_layers)
        if not set(need) <= set(manifest["hidden_layers"]):
            raise XdrayError(
                f"distill.labels: the hidden loss needs teacher layers {need}, the labels store "
                f"{manifest['hidden_layers']}; {relabel} (label.hidden_states: auto or all) or set "
                "distill.teacher_mode: online"
            )


def hidden_layers_needed(cfg: XdrayConfig, teacher_layers: int, student_layers: list[int]) -> list[int]:
    """Teacher hidden-state indices that the layer map pairs with students of these depths."""
    mode = cfg.distill.representation.layer_map
    return sorted({k for n in student_layers if n <= teacher_layers for k in layer_map(n, teacher_layers, mode)})


def hidden_layers_to_store(cfg: XdrayConfig, teacher_layers: int) -> list[int]:
    """``auto``: what the layer map pairs with the distill student and every searched depth (if a stage uses
    the hidden loss offline); ``all``: every layer; ``none``."""
    mode = cfg.label.hidden_states
    if mode == "all":
        return list(range(teacher_layers + 1))
    if mode == "none" or not cfg.distill.uses_hidden or cfg.distill.teacher_mode == "online":
        return []
    return hidden_layers_needed(cfg, teacher_layers, [cfg.distill.student.layers, *cfg.search.layers])


def _blocks(ids: list[str], texts: list[str], pairs: list[str] | None, labels: list[int] | None = None
            ) -> list[pa.Table]:
    """Rows sorted by length, so each batch holds similar lengths and padding wastes little teacher compute."""
    def length(i: int) -> int:
        return len(texts[i]) + (len(pairs[i]) if pairs is not None else 0)

    order = sorted(range(len(texts)), key=length)
    columns = {"id": [ids[i] for i in order], "text": [texts[i] for i in order]}
    if pairs is not None:
        columns["text_pair"] = [pairs[i] for i in order]
    if labels is not None:
        columns["label"] = pa.array([labels[i] for i in order], type=pa.int64())
    table = pa.table(columns)
    return [table.slice(lo, ROWS_PER_BLOCK) for lo in range(0, len(table), ROWS_PER_BLOCK)]


def _transfer_blocks(ids: list[str], lines: list[str], pairs: bool) -> list[pa.Table]:
    if not pairs:
        return _blocks(ids, lines, None)
    split = [split_pair(line) for line in lines]
    return _blocks(ids, [a for a, _ in split], [b for _, b in split])


def _dev_blocks(cfg: XdrayConfig) -> list[pa.Table]:
    """The dev split, with ids from its position and content (dev may repeat a sentence with another label)."""
    _, dev, _ = load_splits(cfg)
    lines = [f"{t}\t{p}" for t, p in zip(dev.texts, dev.pairs)] if dev.pairs is not None else dev.texts
    ids = [stable_id("dev", f"{i}\t{line}") for i, line in enumerate(lines)]
    return _blocks(ids, dev.texts, dev.pairs, dev.labels)


def run_label(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    data_dir = cfg.labels_dir
    ids, lines, counts = read_transfer(cfg.data.transfer, cfg.data.max_transfer_rows, cfg.seed)
    if not ids:
        raise XdrayError("data.transfer: the transfer corpora hold no non-empty lines; fix: point it at text files")
    dev = _dev_blocks(cfg)
    dev_rows = sum(b.num_rows for b in dev)
    teacher_layers = AutoConfig.from_pretrained(cfg.teacher_dir).num_hidden_layers
    hidden = hidden_layers_to_store(cfg, teacher_layers)
    lc = cfg.label

    with tracker.run(cfg, "label", parent) as run_id:
        tracker.params(run_id, {"label": lc.model_dump(mode="json"), "teacher": str(cfg.teacher_dir),
                                "rows": len(ids), "hidden_layers": hidden})
        tmp = staging_dir(data_dir)
        t0 = time.perf_counter()
        predictor = dict(
            fn_constructor_kwargs={
                "teacher_dir": str(cfg.teacher_dir), "max_length": cfg.data.max_length,
                "threads": int(lc.cpus_per_actor), "hidden_layers": hidden,
            },
            compute=ray.data.ActorPoolStrategy(size=lc.actors), num_cpus=lc.cpus_per_actor,
            num_gpus=lc.gpus_per_actor or None, batch_size=lc.batch_size, batch_format="pyarrow",
        )
        written = {}
        for part, blocks in (("transfer", _transfer_blocks(ids, lines, cfg.data.pairs)), ("dev", dev)):
            ray.data.from_arrow(blocks).map_batches(TeacherPredictor, **predictor).write_parquet(str(tmp / part))
            written[part] = pq.read_table(tmp / part, columns=["id", "input_ids"])
        seconds = time.perf_counter() - t0
        for part, expected in (("transfer", len(ids)), ("dev", dev_rows)):
            table = written[part]
            unique = len(set(table.column("id").to_pylist()))
            if table.num_rows != expected or unique != expected:
                raise XdrayError(f"label: wrote {table.num_rows} {part} rows ({unique} unique ids) for {expected} "
                                 "inputs; rerun the step")
        manifest = {
            "schema_version": SCHEMA_VERSION, "teacher": str(cfg.teacher_dir), "max_length": cfg.data.max_length,
            "rows": len(ids), "dev_rows": dev_rows, "teacher_layers": teacher_layers, "hidden_layers": hidden,
            "pairs": cfg.data.pairs,
            "columns": {"id": "string", "input_ids": "list<int32>", "logits": "list<float32>",
                        **({"token_type_ids": "list<int8>"} if cfg.data.pairs else {}),
                        **{f"hidden_{k}": "list<float16>" for k in hidden}, "label (dev only)": "int64"},
        }
        (tmp / "_manifest.json").write_text(json.dumps(manifest, indent=2))
        replace_dir(tmp, data_dir)

        tokens = sum(int(np.sum(pa.compute.list_value_length(t.column("input_ids")).to_numpy()))
                     for t in written.values())
        total = len(ids) + dev_rows
        summary = {
            "rows": len(ids), "dev_rows": dev_rows, "unique_ids": len(ids), "cleaning": counts,
            "hidden_layers": hidden, "seconds": round(seconds, 2), "rows_per_s": round(total / seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1), "actors": lc.actors, "data": str(data_dir),
            "mlflow_run_id": run_id,
        }
        tracker.metrics(run_id, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        tracker.artifact(run_id, data_dir / "_manifest.json")
        tracker.artifact(run_id, write_summary(cfg, "label", summary))
    return summary
