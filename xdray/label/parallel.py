"""The corpus pass in parallel Ray tasks (``label.corpus_segment_mb``), for corpora that one driver core cannot
clean ahead of a large actor pool.

Sources are cut into segments (text files into byte ranges that end at line ends; any other source whole). A
task per segment reads, cleans and ids its rows (``corpus.cleaned_rows``, as the serial pass does) into a
segment file and returns their 64-bit ids; the driver keeps each id's first occurrence in corpus order (and
the seeded sample of ``max_transfer_rows`` that the serial pass would choose) with NumPy, 8 bytes a row; a
second round of tasks writes the kept rows into chunk files. Rows, ids, their order and the cleaning counts
equal the serial pass's; only chunk boundaries differ (each segment's last chunk may be short).
"""

from __future__ import annotations

import io
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from xdray.common.files import atomic_path
from xdray.config import DataConfig
from xdray.errors import XdrayError
from xdray.label.corpus import (
    Row,
    chunk_name,
    cleaned_rows,
    decode_lines,
    read_source,
    stable_id,
    text_rows,
)


@dataclass(frozen=True)
class Segment:
    source: int
    """Index into ``data.transfer``."""
    start: int = 0
    end: int | None = None
    """Byte range of a text source; None: the whole source."""
    first_row: int = 0
    """The source row index of the segment's first row (ids of an undeduplicated corpus depend on it)."""


def plan_segments(data: DataConfig, segment_bytes: int) -> list[Segment]:
    segments = []
    for i, source in enumerate(data.transfer):
        if source.kind != "text":
            segments.append(Segment(i))
            continue
        size, start, rows = source.path.stat().st_size, 0, 0
        with open(source.path, "rb") as f:
            while start < size:
                f.seek(min(start + segment_bytes, size))
                f.readline()  # on to the end of the line the cut fell in
                end = min(f.tell(), size)
                segments.append(Segment(i, start, end, rows))
                if not data.cleaning.dedupe:
                    f.seek(start)
                    rows += f.read(end - start).count(b"\n")
                start = end
    return segments


def _segment_rows(data: DataConfig, segment: Segment, counts: Counter) -> Iterator[Row]:
    source = data.transfer[segment.source]
    if segment.end is None:
        return read_source(source, data.paired, counts)
    with open(source.path, "rb") as f:
        f.seek(segment.start)
        raw = f.read(segment.end - segment.start)
    return text_rows(decode_lines(io.BytesIO(raw), counts, first=segment.start == 0), data.paired)


def clean_segment(data: DataConfig, segment: Segment, dest: str, seed: int | None) -> dict:
    """One task: the segment's cleaned rows (deduped within it) into ``dest``; returns the counts, the rows' ids
    as uint64 and, for sampling (``seed``), their seeded hashes."""
    counts: Counter = Counter()
    rows = cleaned_rows(data.transfer[segment.source], _segment_rows(data, segment, counts), segment.first_row,
                        data.cleaning.dedupe, counts)
    ids, texts, pairs, seen = [], [], [], set()
    for row_id, text, pair in rows:
        if data.cleaning.dedupe:
            if row_id in seen:
                counts["duplicates"] += 1
                continue
            seen.add(row_id)
        ids.append(row_id)
        texts.append(text)
        pairs.append(pair)
    columns = {"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())}
    if data.paired:
        columns["text_pair"] = pa.array(pairs, pa.string())
    with atomic_path(Path(dest)) as tmp:
        pq.write_table(pa.table(columns), tmp)
    keys = np.fromiter((int(i, 16) for i in ids), np.uint64, len(ids))
    sample = None if seed is None else np.fromiter((int(stable_id(str(seed), i), 16) for i in ids), np.uint64,
                                                   len(ids))
    return {"counts": dict(counts), "keys": keys, "sample": sample}


def write_kept(src: str, keep: np.ndarray, directory: str, first_chunk: int, chunk_rows: int) -> list[int]:
    """One task: a segment's kept rows as chunk files numbered from ``first_chunk``; returns their sizes."""
    table = pq.read_table(src).filter(pa.array(keep))
    sizes = []
    for lo in range(0, table.num_rows, chunk_rows):
        part = table.slice(lo, chunk_rows)
        with atomic_path(Path(directory) / chunk_name(first_chunk + len(sizes))) as tmp:
            pq.write_table(part, tmp)
        sizes.append(part.num_rows)
    return sizes


def parallel_chunks(data: DataConfig, seed: int, directory: Path, chunk_rows: int, segment_bytes: int,
                    counts: Counter, run: Callable[[Callable, list[tuple]], list] | None = None) -> list[int]:
    """The parallel counterpart of ``write_chunks(clean_rows(...))``: chunk files under ``directory``, their
    sizes returned, ``counts`` updated with the same keys. ``run(fn, calls)`` maps ``fn`` over argument tuples:
    Ray tasks of 1 CPU by default (``in_process`` runs them here, for tests)."""
    run = run or ray_tasks
    segments = plan_segments(data, segment_bytes)
    scratch = directory.parent / f".{directory.name}-segments"
    shutil.rmtree(scratch, ignore_errors=True)
    files = [str(scratch / f"segment-{k:06d}.parquet") for k in range(len(segments))]
    sample_seed = seed if data.max_transfer_rows is not None else None
    results = run(clean_segment, [(data, s, f, sample_seed) for s, f in zip(segments, files)])
    writes = [(f, keep, str(directory), first, chunk_rows)
              for f, (keep, first) in zip(files, select(results, data, chunk_rows, counts)) if keep.any()]
    sizes = run(write_kept, writes)
    shutil.rmtree(scratch, ignore_errors=True)
    return [n for part in sizes for n in part]


def select(results: list[dict], data: DataConfig, chunk_rows: int, counts: Counter) -> list[tuple[np.ndarray, int]]:
    """Which rows of each segment are kept (first occurrences in corpus order, then the seeded sample), and the
    index of each segment's first chunk; ``counts`` gets the segments' counts and the corpus-wide ones."""
    for r in results:
        counts.update(r["counts"])
    keys = np.concatenate([r["keys"] for r in results]) if results else np.zeros(0, np.uint64)
    keep = np.ones(len(keys), bool)
    if data.cleaning.dedupe and len(keys):
        _, first = np.unique(keys, return_index=True)  # each id's first occurrence in corpus order
        keep[:] = False
        keep[first] = True
        if len(first) < len(keys):  # a Counter key only when there are some, as in the serial pass
            counts["duplicates"] += int(len(keys) - len(first))
    counts["kept"] += int(keep.sum())
    limit = data.max_transfer_rows
    if limit is not None and keep.sum() > limit:
        sample = np.concatenate([r["sample"] for r in results])
        kept = np.flatnonzero(keep)
        keep[:] = False
        keep[kept[np.argsort(sample[kept], kind="stable")[:limit]]] = True  # the smallest seeded hashes
        counts["subsampled_to"] = limit
    bounds = np.cumsum([0] + [len(r["keys"]) for r in results])
    masks = [keep[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    firsts = np.cumsum([0] + [-(-int(m.sum()) // chunk_rows) for m in masks])
    return [(m, int(c)) for m, c in zip(masks, firsts)]


def ray_tasks(fn: Callable, calls: list[tuple]) -> list:
    """``fn`` over ``calls`` as Ray tasks of 1 CPU; a task's own one-line XdrayError (a missing column, say) is
    raised as itself."""
    task = ray.remote(num_cpus=1)(fn)
    try:
        return ray.get([task.remote(*args) for args in calls])
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, XdrayError):
            raise e.cause from None
        raise


def in_process(fn: Callable, calls: list[tuple]) -> list:
    return [fn(*args) for args in calls]
