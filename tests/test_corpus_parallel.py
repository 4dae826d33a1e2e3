"""The parallel corpus pass (``label.corpus_segment_mb``) against the serial one: the same rows, ids, order and
counts, on segments cut small enough that files split mid-way and duplicates fall in other segments. The
tasks run in this process here; ``test_label`` runs them as Ray tasks."""

from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow.parquet as pq
import pytest

from xdray.label.corpus import chunk_name, clean_rows
from xdray.label.parallel import in_process, parallel_chunks, plan_segments

from .test_corpus import data_config


def corpus(tmp_path) -> list:
    rng = random.Random(0)
    words = ["great", "dull", "film", "plot", "cast", "weak", "superb", "ending"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    lines[7] = "  padded line  "
    lines[40:43] = ["", "   ", "\t"]
    raw = ("\ufeff" + "\n".join(lines) + "\n").encode() + b"bad \xff bytes\n" + b"last line without newline"
    (tmp_path / "a.txt").write_bytes(raw)
    (tmp_path / "b.txt").write_text("\n".join(lines[::7]) + "\n")  # duplicates of a.txt, in another source
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[::5]) + "{broken\n")
    return [str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), str(tmp_path / "c.jsonl")]


def chunked(tmp_path, cfg, segment_bytes: int, chunk_rows: int = 16) -> tuple[list, Counter, list[int]]:
    counts = Counter()
    out = tmp_path / "chunks"
    sizes = parallel_chunks(cfg, 3, out, chunk_rows, segment_bytes, counts, run=in_process)
    rows = [r for i in range(len(sizes)) for r in pq.read_table(out / chunk_name(i)).to_pylist()]
    assert [len(pq.read_table(out / chunk_name(i))) for i in range(len(sizes))] == sizes
    assert not list(tmp_path.glob(".chunks-segments"))  # the segment files are gone
    return rows, counts, sizes


@pytest.mark.parametrize("extra", [{}, {"cleaning": {"dedupe": False}}, {"max_transfer_rows": 50}],
                         ids=["dedupe", "no-dedupe", "sampled"])
def test_the_parallel_pass_gives_the_serial_rows_ids_order_and_counts(tmp_path, extra):
    cfg = data_config(tmp_path, corpus(tmp_path), **extra)
    assert len(plan_segments(cfg, 200)) > 10  # a.txt alone is cut into many segments
    serial_counts = Counter()
    serial = list(clean_rows(cfg, 3, serial_counts))
    rows, counts, sizes = chunked(tmp_path, cfg, 200)
    assert [(r["id"], r["text"]) for r in rows] == [(i, t) for i, t, _ in serial]
    assert counts == serial_counts
    assert len(sizes) > 1 and max(sizes) <= 16


def test_pairs_split_across_segments_and_a_corpus_without_duplicates_match_the_serial_pass(tmp_path):
    (tmp_path / "p.txt").write_text("".join(f"first {i}\tsecond {i % 7}\n" for i in range(120)))
    cfg = data_config(tmp_path, [str(tmp_path / "p.txt")], pairs=True)
    serial_counts = Counter()
    serial = list(clean_rows(cfg, 0, serial_counts))
    rows, counts, _ = chunked(tmp_path, cfg, 100)
    assert [(r["id"], r["text"], r["text_pair"]) for r in rows] == serial
    assert counts == serial_counts and "duplicates" not in counts  # none here: not even a zero count
