"""`xdray label`: the teacher labels the transfer corpus (and the dev split) once, into Parquet that every
distillation stage and search trial reads.

How it runs: the driver streams the sources through cleaning into fixed-size chunk files (``label/work``), or,
with ``label.corpus_segment_mb``, parallel Ray tasks do (``label.parallel``);
Ray Data hands the chunks to a pool of teacher actors (``ChunkLabeler``), and each actor writes one Parquet
shard per chunk, atomically. A rerun after a crash or Ctrl-C labels only the chunks without a shard (Ray
Data's own checkpointing is not used: it hangs on small clusters). When every shard exists the directory is
swapped into place with its manifest, so a partial dataset never looks complete, and a rerun of a complete
run does nothing.

Output (``<output_dir>/label/data``, schema version 3):
- ``transfer/*.parquet``: ``id`` (string, content-derived), ``input_ids`` (list<int32>, the teacher tokenizer's
  ids without padding), ``token_type_ids`` (list<int8>, sentence pairs and QA only), ``logits`` (list<float32>, or
  float16 with ``label.logits_dtype``) and ``hidden_<k>`` (list<float16>: the teacher's [CLS] state after
  layer k, 0 = embeddings) for the layers the hidden-state loss maps to;
- ``dev/*.parquet``: the same for the dev split plus its ``label``, so stages on teacher targets early-stop on
  a dev loss without running the teacher;
- token tasks hold per-token logits instead of ``logits``, and QA tasks one row per question + context window
  with its start and end logits (``distill.token_layout``; the manifest's ``layout``);
- ``_manifest.json``: teacher (path and content hash), tokenizer (hash), max length, row counts, stored hidden
  layers, cleaning counts, the schema version and the fingerprint of everything that determines the rows.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from transformers import AutoConfig

from xdray.common.files import file_stamp, read_json, read_summary, replace_dir, write_json, write_summary
from xdray.common.memory import peak_rss_mb
from xdray.common.tracking import Tracker
from xdray.config import XdrayConfig
from xdray.console import console
from xdray.data.tables import load_splits
from xdray.distill.losses import layer_map
from xdray.distill.token_layout import Layout
from xdray.errors import XdrayError
from xdray.label.corpus import chunk_name, clean_rows, stable_id, write_chunks
from xdray.label.labeler import ChunkLabeler
from xdray.label.parallel import parallel_chunks

SCHEMA_VERSION = 3
PARTS = ("transfer", "dev")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "spiece.model", "sentencepiece.bpe.model")


def check_labels(cfg: XdrayConfig, student_layers: list[int], hidden: bool) -> Layout:
    """Refuse labelled data that does not fit this distillation (``hidden``: it uses the hidden loss), before
    any worker starts; returns the layout of the teacher outputs it holds."""
    path = cfg.labels_dir / "_manifest.json"
    manifest = json.loads(path.read_text())
    relabel = "fix: relabel with `xdray label`"
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise XdrayError(f"distill.labels: {path} has schema {manifest.get('schema_version')}, this xdray reads "
                         f"{SCHEMA_VERSION}; {relabel}")
    layout, task = Layout.read(manifest.get("layout")), label_layout(cfg)
    layout.check(task.kind, task.num_labels, f"distill.labels ({cfg.labels_dir})")
    hashes = teacher_hashes(cfg.teacher_dir)
    for key, what in (("teacher_sha256", "weights"), ("tokenizer_sha256", "tokenizer")):
        if manifest.get(key) != hashes[key]:
            raise XdrayError(
                f"distill.labels: {cfg.labels_dir} was labelled by a teacher ({manifest['teacher']}) whose {what} "
                f"differ from {cfg.teacher_dir}; {relabel} or point label.teacher at the teacher that labelled it"
            )
    if manifest.get("pairs") != cfg.data.pairs:
        raise XdrayError(f"distill.labels: labelled with data.pairs={manifest.get('pairs')}, the config has "
                         f"{cfg.data.pairs}; {relabel} or fix data.pairs")
    if cfg.distill.teacher_mode == "offline" and hidden:
        need = hidden_layers_needed(cfg, manifest["teacher_layers"], student_layers)
        if not set(need) <= set(manifest["hidden_layers"]):
            raise XdrayError(
                f"distill.labels: the hidden loss needs teacher layers {need}, the labels store "
                f"{manifest['hidden_layers']}; {relabel} (label.hidden_states: auto or all) or set "
                "distill.teacher_mode: online"
            )
    return layout


def hidden_layers_needed(cfg: XdrayConfig, teacher_layers: int, student_layers: list[int]) -> list[int]:
    """Teacher hidden-state indices that the layer map pairs with students of these depths."""
    mode = cfg.distill.representation.layer_map
    return sorted({k for n in student_layers if n <= teacher_layers for k in layer_map(n, teacher_layers, mode)})


def hidden_layers_to_store(cfg: XdrayConfig, teacher_layers: int) -> list[int]:
    """``auto``: what the layer map pairs with the distill student and every searched depth (if a stage uses
    the hidden loss offline); ``all``: every layer; ``none``."""
    mode = cfg.label.hidden_states
    if cfg.data.task != "classification":  # [CLS] states say little about tags: token tasks distil hidden online
        return []
    if mode == "all":
        return list(range(teacher_layers + 1))
    if mode == "none" or not cfg.uses_hidden or cfg.distill.teacher_mode == "online":
        return []
    return hidden_layers_needed(cfg, teacher_layers, [cfg.distill.student.layers, *cfg.search.space.layers])


def file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def teacher_hashes(teacher_dir: Path) -> dict[str, str]:
    """Content hashes of the teacher's weights + config and of its tokenizer files."""
    files = [p for p in teacher_dir.iterdir() if p.is_file()]
    weights = [p for p in files if p.name == "config.json" or p.suffix in (".safetensors", ".bin")]
    return {"teacher_sha256": file_digest(weights),
            "tokenizer_sha256": file_digest([p for p in files if p.name in TOKENIZER_FILES])}


def label_layout(cfg: XdrayConfig) -> Layout:
    """What the Parquet holds per row for this source task: sequence logits, per-token logits, or QA windows'
    start and end logits."""
    if cfg.data.task == "question_answering":
        return Layout("qa", num_labels=2, stride=cfg.data.stride)
    if cfg.data.task != "token_classification":
        return Layout()
    tags = AutoConfig.from_pretrained(cfg.teacher_dir).num_labels
    return Layout("tokens", cfg.label.token_positions, cfg.label.token_top_k, tags)


def fingerprint(cfg: XdrayConfig, hashes: dict, hidden: list[int]) -> dict:
    """Everything that determines the labelled rows; a partial or complete run is reused only when it matches."""
    d = cfg.data
    sources = [{**s.model_dump(mode="json"), **(file_stamp(s.path) if s.path is not None else {})} for s in d.transfer]
    return {
        "schema_version": SCHEMA_VERSION, **hashes, "max_length": d.max_length, "pairs": d.pairs,
        "hidden_layers": hidden, "logits_dtype": cfg.label.logits_dtype, "chunk_rows": cfg.label.chunk_rows,
        "cleaning": d.cleaning.model_dump(), "sources": sources, "dev": {"path": str(d.dev), **file_stamp(d.dev)},
        "max_transfer_rows": d.max_transfer_rows, "seed": cfg.seed if d.max_transfer_rows else None,
        **({"layout": label_layout(cfg).describe()} if cfg.data.task != "classification" else {}),
    }


def _dev_rows(cfg: XdrayConfig):
    """The dev split, with ids from position and content (dev may repeat a sentence with another label); a
    token task's rows carry their words and tags, a QA task's its question, context and answers."""
    if cfg.data.task in ("token_classification", "question_answering"):
        from xdray.transfer.tasks import load_task

        for i, row in enumerate(load_task(cfg.source_task(), cfg.seed).dev):
            if "tokens" in row:
                text = " ".join(row["tokens"])
                yield stable_id("dev", f"{i}\t{text}"), text, row["tokens"], row["tags"]
            else:
                yield (stable_id("dev", f"{i}\t{row['question']}\t{row['context']}"), row["question"], row["context"],
                       row["answers"], row["answer_starts"])
        return
    _, dev, _ = load_splits(cfg)
    for i, text in enumerate(dev.texts):
        pair = dev.pairs[i] if dev.pairs is not None else None
        content = text if pair is None else f"{text}\t{pair}"
        yield (stable_id("dev", f"{i}\t{content}"), text, *((pair,) if pair is not None else ()), dev.labels[i])


def prepare(cfg: XdrayConfig, work: Path, fp: dict) -> dict:
    """Stream the cleaned corpus and the dev split into chunk files; the plan written last marks them complete.
    An empty corpus raises and leaves nothing behind."""
    t0 = time.perf_counter()
    counts: Counter = Counter()
    columns = ["id", "text", "text_pair"] if cfg.data.paired else ["id", "text"]
    rows = cfg.label.chunk_rows
    try:
        if cfg.label.corpus_segment_mb is None:
            transfer = write_chunks(clean_rows(cfg.data, cfg.seed, counts), work / "corpus" / "transfer", rows, columns)
        else:
            segment_bytes = max(1, int(cfg.label.corpus_segment_mb * 2**20))
            transfer = parallel_chunks(cfg.data, cfg.seed, work / "corpus" / "transfer", rows, segment_bytes, counts)
        if not transfer:
            names = ", ".join(s.key for s in cfg.data.transfer)
            raise XdrayError(f"data.transfer: the corpus ({names}) holds no non-empty rows ({counts['rows']} read); "
                             "fix: point data.transfer at non-empty text, or at the right column")
        if cfg.data.task == "token_classification":
            dev = write_chunks(_dev_rows(cfg), work / "corpus" / "dev", rows, [*columns, "tokens", "tags"],
                               {"tokens": pa.list_(pa.string()), "tags": pa.list_(pa.int16())})
        elif cfg.data.task == "question_answering":
            dev = write_chunks(_dev_rows(cfg), work / "corpus" / "dev", rows, [*columns, "answers", "answer_starts"],
                               {"answers": pa.list_(pa.string()), "answer_starts": pa.list_(pa.int64())})
        else:
            dev = write_chunks(_dev_rows(cfg), work / "corpus" / "dev", rows, [*columns, "label"], {"label": pa.int64()})
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if work.parent.is_dir() and not any(work.parent.iterdir()):
            work.parent.rmdir()
        raise
    chunks = [{"part": part, "file": chunk_name(i), "rows": n}
              for part, sizes in (("transfer", transfer), ("dev", dev)) for i, n in enumerate(sizes)]
    plan = {"fingerprint": fp, "cleaning": dict(counts), "chunks": chunks, "seconds": time.perf_counter() - t0}
    write_json(work / "plan.json", plan)
    return plan


def _label_chunks(cfg: XdrayConfig, work: Path, todo: list[dict], hidden: list[int]) -> list[dict]:
    """Ray Data feeds the chunk paths to the actor pool; each actor writes its shards and returns counts.
    One chunk in flight per actor: queuing more would let the first actor up take work an idle one could do."""
    lc = cfg.label
    items = [{"source": str(work / "corpus" / c["part"] / c["file"]), "dest": str(work / "out" / c["part"] / c["file"])}
             for c in todo]
    labeller = dict(
        teacher_dir=str(cfg.teacher_dir), max_length=cfg.data.max_length, threads=max(1, int(lc.cpus_per_actor)),
        batch_size=lc.batch_size, hidden_layers=hidden, overlong=cfg.data.cleaning.overlong,
        logits_dtype=lc.logits_dtype, precision=lc.precision, layout=label_layout(cfg).describe(),
    )
    pool = ray.data.ActorPoolStrategy(size=lc.actors, max_tasks_in_flight_per_actor=1)
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ChunkLabeler, fn_constructor_kwargs=labeller, compute=pool, num_cpus=lc.cpus_per_actor,
        num_gpus=lc.gpus_per_actor or None, batch_size=1,
    )
    return list(ds.iter_rows())


def _shard_stats(work: Path, plan: dict) -> list[dict]:
    """The counts every shard carries in its metadata, checked against its chunk: nothing missing, nothing extra."""
    stats = []
    for chunk in plan["chunks"]:
        path = work / "out" / chunk["part"] / chunk["file"]
        meta = pq.read_metadata(path)
        s = json.loads(meta.metadata[b"xdray.stats"])
        if s["rows"] != chunk["rows"] or meta.num_rows != s["labelled"]:
            raise XdrayError(f"label: shard {path} holds {meta.num_rows} rows for a chunk of {chunk['rows']}; "
                             f"fix: delete it and rerun the step")
        stats.append({**s, "part": chunk["part"]})
    return stats


def unique_ids(parquet_dir: Path) -> int:
    """Distinct ``id`` values over every shard: equal to the row count when nothing was labelled twice."""
    ids = pq.read_table(parquet_dir, columns=["id"])["id"]
    return int(pc.count_distinct(ids).as_py()) if len(ids) else 0


def run_label(cfg: XdrayConfig, tracker: Tracker, parent: str | None = None) -> dict:
    data_dir, work = cfg.labels_dir, cfg.step_dir("label") / "work"
    teacher_layers = AutoConfig.from_pretrained(cfg.teacher_dir).num_hidden_layers
    hidden = hidden_layers_to_store(cfg, teacher_layers)
    hashes = teacher_hashes(cfg.teacher_dir)
    fp = fingerprint(cfg, hashes, hidden)
    complete, summary = read_json(data_dir / "_manifest.json"), read_summary(cfg, "label")
    if complete and complete.get("fingerprint") == fp and summary is not None:
        shutil.rmtree(work, ignore_errors=True)
        console.line(f"  label: {data_dir} is complete for this teacher and corpus; nothing to do")
        return {**summary, "up_to_date": True}

    t0 = time.perf_counter()
    plan = read_json(work / "plan.json")
    if plan is None or plan["fingerprint"] != fp:
        shutil.rmtree(work, ignore_errors=True)
        plan = prepare(cfg, work, fp)
    todo = [c for c in plan["chunks"] if not (work / "out" / c["part"] / c["file"]).is_file()]
    lc, layout = cfg.label, label_layout(cfg)
    with tracker.run(cfg, "label", parent) as run_id:
        tracker.params(run_id, {"label": lc.model_dump(mode="json"), "teacher": str(cfg.teacher_dir),
                                "cleaning": cfg.data.cleaning.model_dump(), "hidden_layers": hidden,
                                "sources": [s.key for s in cfg.data.transfer]})
        t1 = time.perf_counter()
        with console.progress("label", "rows", _poll(work, plan)):
            ran = _label_chunks(cfg, work, todo, hidden) if todo else []
        seconds = time.perf_counter() - t1
        stats = _shard_stats(work, plan)
        rows = {part: sum(s["labelled"] for s in stats if s["part"] == part) for part in PARTS}
        cleaning = {**plan["cleaning"], "truncated": sum(s["truncated"] for s in stats),
                    "overlong_dropped": sum(s["overlong_dropped"] for s in stats)}
        manifest = {
            "schema_version": SCHEMA_VERSION, "teacher": str(cfg.teacher_dir), **hashes,
            "max_length": cfg.data.max_length, "rows": rows["transfer"], "dev_rows": rows["dev"],
            "teacher_layers": teacher_layers, "hidden_layers": hidden, "pairs": cfg.data.pairs,
            "cleaning": cleaning, "layout": layout.describe(), "columns": _columns(cfg, layout, hidden),
            "fingerprint": fp,
        }
        write_json(work / "out" / "_manifest.json", manifest)
        replace_dir(work / "out", data_dir)
        shutil.rmtree(work)

        tokens, padded = sum(int(s["tokens"]) for s in ran), sum(int(s["padded_tokens"]) for s in ran)
        labelled = sum(int(s["labelled"]) for s in ran)
        summary = {
            "rows": rows["transfer"], "dev_rows": rows["dev"], "unique_ids": unique_ids(data_dir / "transfer"),
            "cleaning": cleaning,
            "hidden_layers": hidden, "chunks": len(plan["chunks"]), "resumed_chunks": len(plan["chunks"]) - len(todo),
            "seconds": round(time.perf_counter() - t0, 2), "label_seconds": round(seconds, 2),
            "corpus_seconds": round(plan["seconds"], 2),  # read, clean, dedupe, chunk (and the dev split)
            "corpus_rows_per_s": round(plan["cleaning"].get("rows", 0) / max(plan["seconds"], 1e-9), 1),
            "rows_per_s": round(labelled / seconds, 1) if ran else 0.0,
            "tokens_per_s": round(tokens / seconds, 1) if ran else 0.0,
            "pad_fraction": round(1 - tokens / padded, 4) if padded else 0.0,
            "peak_rss_mb": {"driver": round(peak_rss_mb(), 1),
                            "actor": round(max((float(s["peak_rss_mb"]) for s in ran), default=0.0), 1)},
            "actors": lc.actors, "data": str(data_dir), "mlflow_run_id": run_id,
        }
        flat = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        flat.update({f"cleaning_{k}": v for k, v in cleaning.items()})
        flat.update({f"peak_rss_mb_{k}": v for k, v in summary["peak_rss_mb"].items()})
        tracker.metrics(run_id, flat)
        tracker.artifact(run_id, data_dir / "_manifest.json")
        tracker.artifact(run_id, write_summary(cfg, "label", summary))
    return summary


def _columns(cfg: XdrayConfig, layout: Layout, hidden: list[int]) -> dict[str, str]:
    """The Parquet columns, for the manifest."""
    columns = {"id": "string", "input_ids": "list<int32>"}
    if cfg.data.paired:
        columns["token_type_ids"] = "list<int8>"
    if layout.kind == "qa":  # one row per window
        columns |= {"start_logits": "list<float16>", "end_logits": "list<float16>",
                    "start_positions, end_positions (dev only)": "int16",
                    "example_id, question, context (dev only)": "string", "answers (dev only)": "list<string>"}
    elif layout.kind == "tokens":
        columns |= {"token_positions": "list<int16>", "token_logits": "list<float16>"}
        if not layout.lossless:
            columns |= {"token_labels": "list<int16>", "token_lse": "list<float16>"}
        columns["token_tags (dev only)"] = "list<int16>"
    else:
        columns |= {"logits": f"list<{cfg.label.logits_dtype}>", "label (dev only)": "int64"}
    return columns | {f"hidden_{k}": "list<float16>" for k in hidden}


def _poll(work: Path, plan: dict):
    """Rows labelled so far: the chunks whose shard exists (each actor writes one per chunk)."""
    def poll() -> tuple[int, int, str]:
        done = [c for c in plan["chunks"] if (work / "out" / c["part"] / c["file"]).is_file()]
        total = sum(c["rows"] for c in plan["chunks"])
        return sum(c["rows"] for c in done), total, f"{len(done)}/{len(plan['chunks'])} chunks"

    return poll
