"""Labelling a million rows on a 3-node cluster: exactly one row per id, flat memory, the corpus pass measured.

The corpus is the sample transfer corpus (``xdray data samples``) cycled with the row number appended, so every
row is distinct; a tiny teacher (2 layers, hidden 32, MiniLM's WordPiece vocabulary) keeps the labelling itself
cheap, so what is measured is xdray's own plumbing: the serial read/clean/dedupe/chunk pass in the driver, the
Ray Data actor pool and the shard writes. The cluster is a ``ray.cluster_utils.Cluster`` of three raylets on
this machine (a head and two worker nodes); each size runs as its own ``xdray label`` process joined to it, so
the driver's peak RSS is that size's own. Runs 100,000 rows, then 1,000,000, then the corpus pass alone on the
million rows twice, back to back: serially in one process, and as parallel Ray tasks on the cluster
(``label.corpus_segment_mb``). Prints one JSON line:

    python bench/label_scale.py [--rows 1000000] [--small 100000] [--actors 2] [--segment-mb 16]

A finished size is reused (the label step's own "complete: nothing to do"); delete
``outputs/bench/label_scale`` to measure again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "bench" / "label_scale"
SAMPLES = REPO / "data" / "samples"


def corpus(rows: int) -> Path:
    """``rows`` distinct lines: the sample corpus cycled, each line with its row number appended."""
    path = OUT / f"corpus-{rows}.txt"
    if path.is_file():
        return path
    lines = [s for s in (SAMPLES / "transfer.txt").read_text().splitlines() if s.strip()]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for i in range(rows):
            f.write(f"{lines[i % len(lines)]} {i}\n")
    os.replace(tmp, path)
    return path


def tiny_teacher() -> Path:
    """A 2-layer, hidden-32 BERT classifier on MiniLM's tokenizer (random weights: speed, not quality)."""
    path = OUT / "teacher"
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(SAMPLES / "minilm-l6")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def job(rows: int, address: str, actors: int) -> Path:
    out = OUT / f"run-{rows}"
    cfg = {
        "output_dir": str(out), "ray": {"address": address}, "mlflow": {"experiment": "xdray-bench-label-scale"},
        "data": {"train": str(SAMPLES / "movie" / "train.tsv"), "dev": str(SAMPLES / "movie" / "dev.tsv"),
                 "test": str(SAMPLES / "movie" / "test.tsv"), "transfer": [str(corpus(rows))], "max_length": 64},
        "teacher": {"backbone": str(tiny_teacher())},
        "label": {"teacher": str(tiny_teacher()), "batch_size": 256, "chunk_rows": 8192, "actors": actors,
                  "cpus_per_actor": 1, "hidden_states": "none"},
    }
    path = OUT / f"job-{rows}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def label(rows: int, address: str, actors: int) -> dict:
    path = job(rows, address, actors)
    proc = subprocess.run([sys.executable, "-m", "xdray.cli", "label", str(path)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": address})
    if proc.returncode:
        sys.exit(f"label_scale: xdray label ({rows} rows) failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((OUT / f"run-{rows}" / "label" / "summary.json").read_text())
    ids = pq.read_table(OUT / f"run-{rows}" / "label" / "data" / "transfer", columns=["id"])["id"]
    summary["stored_rows"], summary["stored_unique"] = len(ids), pc.count_distinct(ids).as_py()
    return summary


def corpus_pass(rows: int, address: str, segment_mb: float) -> dict:
    """The read/clean/dedupe/chunk pass alone on the big corpus, serial in this process and then as parallel Ray
    tasks on the cluster (``label.corpus_segment_mb``), back to back: rows/s of each."""
    import shutil
    from collections import Counter

    import ray

    from xdray.config import load_config
    from xdray.label.corpus import clean_rows, write_chunks
    from xdray.label.parallel import parallel_chunks

    cfg = load_config(job(rows, address, 1))
    out, figures = OUT / "corpus-pass", {}
    for mode in ("serial", "parallel"):
        shutil.rmtree(out, ignore_errors=True)
        counts: Counter = Counter()
        t0 = time.perf_counter()
        if mode == "serial":
            write_chunks(clean_rows(cfg.data, cfg.seed, counts), out, cfg.label.chunk_rows, ["id", "text"])
        else:
            ray.init(address=address, log_to_driver=False)
            try:
                parallel_chunks(cfg.data, cfg.seed, out, cfg.label.chunk_rows, int(segment_mb * 2**20), counts)
            finally:
                ray.shutdown()
        figures[mode] = round(counts["rows"] / (time.perf_counter() - t0), 1)
    shutil.rmtree(out, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--segment-mb", type=float, default=16.0, help="segment size of the parallel corpus pass")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not (SAMPLES / "transfer.txt").is_file():
        subprocess.run([sys.executable, "-m", "xdray.cli", "data", "samples"], check=True, cwd=REPO)
    OUT.mkdir(parents=True, exist_ok=True)
    from ray.cluster_utils import Cluster

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        small, big = (label(n, cluster.address, args.actors) for n in (args.small, args.rows))
        passes = corpus_pass(args.rows, cluster.address, args.segment_mb)
    finally:
        cluster.shutdown()
    per_core = big["corpus_rows_per_s"]
    print(json.dumps({
        "rows": big["rows"], "unique_ids": big["unique_ids"], "missing": args.rows - big["stored_unique"],
        "duplicates": big["stored_rows"] - big["stored_unique"],
        "corpus_rows_per_s": per_core, "label_rows_per_s": big["rows_per_s"],
        "peak_rss_mb_driver": big["peak_rss_mb"]["driver"], "peak_rss_mb_actor": big["peak_rss_mb"]["actor"],
        "peak_rss_mb_driver_100k": small["peak_rss_mb"]["driver"], "peak_rss_mb_actor_100k": small["peak_rss_mb"]["actor"],
        "rss_ratio_driver": round(big["peak_rss_mb"]["driver"] / small["peak_rss_mb"]["driver"], 3),
        "rss_ratio_actor": round(big["peak_rss_mb"]["actor"] / small["peak_rss_mb"]["actor"], 3),
        "corpus_seconds": big["corpus_seconds"], "label_seconds": big["label_seconds"],
        "corpus_pass_rows_per_s": passes, "corpus_parallel_speedup": round(passes["parallel"] / passes["serial"], 2),
        "label_rows_per_s_per_actor": round(big["rows_per_s"] / args.actors, 1),
        "corpus_keeps_ahead_of_actors": round(per_core / (big["rows_per_s"] / args.actors), 2),
        "actors": args.actors, "nodes": 3, "seconds": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
