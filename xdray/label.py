"""`xdray label`: Ray Data streams the transfer corpus through a pool of teacher actors and writes Parquet.

Output (``<output_dir>/label/data``): Parquet with columns ``id`` (string, content-derived), ``input_ids``
(list<int32>, the teacher tokenizer's ids without padding) and ``logits`` (list<float32>), plus
``_manifest.json`` (teacher, tokenizer, max length, rows, schema version). Rows are written to a temporary
directory that is renamed into place only when complete, so a crash never leaves a partial dataset that
looks whole.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from xdray.config import XdrayConfig
from xdray.data.tables import read_transfer
from xdray.errors import XdrayError
from xdray.runtime import replace_dir, staging_dir, write_summary
from xdray.tracking import Tracker

SCHEMA_VERSION = 1
ROWS_PER_BLOCK = 256


class TeacherPredictor:
    """A Ray Data actor: loads the teacher once, then labels batches."""

    def __init__(self, teacher_dir: str, max_length: int, threads: int):
        from xdray.models.teacher import load_classifier

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU when Ray gave one
        self.model, self.tokenizer = load_classifier(teacher_dir)
        self.model.to(self.device).eval()
        self.max_length = max_length

    @torch.inference_mode()
    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        inputs = {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}
        logits = self.model(**inputs).logits.cpu()
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        ids = enc["input_ids"].to(torch.int32).numpy()
        return pa.table(
            {
                "id": batch.column("id"),
                "input_ids": pa.array([row[:n].tolist() for row, n in zip(ids, lengths)], type=pa.list_(pa.int32())),
                "logits": pa.array(logits.float().numpy().tolist(), type=pa.list_(pa.float32())),
            }
        )


def run_label(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    data_dir = cfg.labels_dir
    ids, texts, counts = read_transfer(cfg.data.transfer, cfg.data.max_transfer_rows, cfg.seed)
    if not ids:
        raise XdrayError("data.transfer: the transfer corpora hold no non-empty lines; fix: point it at text files")
    # sort by length so each batch holds similar lengths and padding wastes little teacher compute
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    table = pa.table({"id": [ids[i] for i in order], "text": [texts[i] for i in order]})
    blocks = [table.slice(lo, ROWS_PER_BLOCK) for lo in range(0, len(table), ROWS_PER_BLOCK)]
    lc = cfg.label

    with tracker.run(cfg, "label", parent) as run_id:
        tracker.params(run_id, {"label": lc.model_dump(mode="json"), "teacher": str(cfg.teacher_dir), "rows": len(ids)})
        tmp = staging_dir(data_dir)
        t0 = time.perf_counter()
        ds = ray.data.from_arrow(blocks).map_batches(
            TeacherPredictor,
            fn_constructor_kwargs={
                "teacher_dir": str(cfg.teacher_dir), "max_length": cfg.data.max_length,
                "threads": int(lc.cpus_per_actor),
            },
            compute=ray.data.ActorPoolStrategy(size=lc.actors),
            num_cpus=lc.cpus_per_actor,
            num_gpus=lc.gpus_per_actor or None,
            batch_size=lc.batch_size,
            batch_format="pyarrow",
        )
        ds.write_parquet(str(tmp))
        seconds = time.perf_counter() - t0

        written = pq.read_table(tmp, columns=["id", "input_ids"])
        rows, unique = written.num_rows, len(set(written.column("id").to_pylist()))
        if rows != len(ids) or unique != rows:
            raise XdrayError(f"label: wrote {rows} rows ({unique} unique ids) for {len(ids)} inputs; rerun the step")
        tokens = int(np.sum(pa.compute.list_value_length(written.column("input_ids")).to_numpy()))
        manifest = {
            "schema_version": SCHEMA_VERSION, "teacher": str(cfg.teacher_dir), "max_length": cfg.data.max_length,
            "rows": rows, "columns": {"id": "string", "input_ids": "list<int32>", "logits": "list<float32>"},
        }
        (tmp / "_manifest.json").write_text(json.dumps(manifest, indent=2))
        replace_dir(tmp, data_dir)

        summary = {
            "rows": rows, "unique_ids": unique, "cleaning": counts, "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds, 1), "tokens_per_s": round(tokens / seconds, 1),
            "actors": lc.actors, "data": str(data_dir), "mlflow_run_id": run_id,
        }
        tracker.metrics(run_id, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        tracker.artifact(run_id, data_dir / "_manifest.json")
        tracker.artifact(run_id, write_summary(cfg, "label", summary))
    return summary
