"""Labelling throughput: `xdray label` vs a bare single-process torch loop and vs `transformers.pipeline`, on the
same CPU, teacher (MiniLM-L6 from the package, with a seeded 2-class head) and corpus (the sample transfer
corpus), in one run; then peak memory of the labelling driver and actors on a 10k- and a 100k-row corpus.

- bare: one process, all cores as torch threads, the same tokenizer call, the same length bucketing
  (``length_batches`` within windows of ``label.chunk_rows``) and batch size; no Ray, no Parquet. Timed from
  loading the teacher (torch is already imported) to the last batch.
- pipeline: ``pipeline("text-classification", model=<teacher>, batch_size=<same>)`` in its default settings,
  timed from building the pipeline.
- xdray: ``run_label`` in this process with Ray already started (``ray.init`` is a per-session cost), timed
  from the call to the return: hashing the teacher, cleaning and chunking, actor start-up, labelling the
  corpus plus the dev split, Parquet, manifest and MLflow. Sentences/s counts the dev rows it also labels.
- memory: ``xdray label`` as a subprocess per corpus size (the same 10k sample lines, cycled with a numeric
  suffix so rows stay unique); peak RSS (VmHWM) of the driver and of the largest actor, from the step's summary.

Prints one JSON line. ``python bench/label_throughput.py [--rows N] [--batch-size 64] [--actors 2] [--no-rss]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from xdray.common.tracking import Tracker
from xdray.config import validate_config
from xdray.data.samples import prepare_samples
from xdray.label.corpus import clean_rows
from xdray.label.labeler import length_batches, pad_batch
from xdray.pipeline import run_step

MAX_LENGTH = 128


def teacher(samples: Path, out: Path) -> Path:
    """MiniLM-L6 with a seeded, untrained 2-class head: throughput does not depend on the head's values."""
    path = out / "teacher"
    if not (path / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(samples / "minilm-l6", num_labels=2)
        model.save_pretrained(path, safe_serialization=True)
        AutoTokenizer.from_pretrained(samples / "minilm-l6").save_pretrained(path)
    return path


def config(samples: Path, out: Path, corpus: Path, teacher_dir: Path, args) -> dict:
    movie = samples / "movie"
    return {
        "output_dir": str(out),
        "mlflow": {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "xdray-bench-label"},
        "data": {"train": str(movie / "train.tsv"), "dev": str(movie / "dev.tsv"), "test": str(movie / "test.tsv"),
                 "transfer": [str(corpus)], "max_length": MAX_LENGTH},
        "teacher": {"backbone": str(teacher_dir)},
        "label": {"teacher": str(teacher_dir), "batch_size": args.batch_size, "actors": args.actors,
                  "cpus_per_actor": args.cpus_per_actor, "hidden_states": "none"},
    }


@torch.inference_mode()
def bare_loop(teacher_dir: Path, texts: list[str], batch_size: int, window: int) -> tuple[float, float]:
    """(seconds, pad fraction) of the plainest loop that does the same work as the labelling actors."""
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()  # loading the teacher counts, as the start-up of xdray's actors does
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    tokens = padded = 0
    for lo in range(0, len(texts), window):
        ids = tokenizer(texts[lo:lo + window], truncation=True, max_length=MAX_LENGTH)["input_ids"]
        for batch in length_batches([len(r) for r in ids], batch_size):
            input_ids, mask = pad_batch([ids[i] for i in batch], tokenizer.pad_token_id)
            model(input_ids=input_ids, attention_mask=mask).logits.float().numpy()
            tokens, padded = tokens + int(mask.sum()), padded + mask.numel()
    return time.perf_counter() - t0, 1 - tokens / padded


def hf_pipeline(teacher_dir: Path, texts: list[str], batch_size: int) -> float:
    t0 = time.perf_counter()
    classify = pipeline("text-classification", model=str(teacher_dir), batch_size=batch_size)
    results = list(classify(texts))
    assert len(results) == len(texts)
    return time.perf_counter() - t0


def rss_run(samples: Path, out: Path, lines: list[str], rows: int, teacher_dir: Path, args) -> dict:
    """Peak RSS (MB) of an `xdray label` subprocess on ``rows`` unique rows."""
    run = out / f"rss-{rows}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    corpus = run / "corpus.txt"
    with open(corpus, "w") as f:
        for i in range(rows):
            f.write(f"{lines[i % len(lines)]} {i // len(lines)}\n")
    job = run / "job.yaml"
    job.write_text(yaml.safe_dump(config(samples, run / "out", corpus, teacher_dir, args)))
    subprocess.run([sys.executable, "-m", "xdray.cli", "label", str(job)], check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run / "out" / "label" / "summary.json").read_text())
    return {**summary["peak_rss_mb"], "rows_per_s": summary["rows_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/label"))
    parser.add_argument("--rows", type=int, default=None, help="corpus rows (default: the whole sample corpus)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--no-rss", action="store_true", help="skip the 10k/100k-row memory runs")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    samples = Path("data/samples")
    prepare_samples(samples)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = teacher(samples, out)

    raw = validate_config(config(samples, out / "run", samples / "transfer.txt", teacher_dir, args))
    lines = [text for _, text, _ in clean_rows(raw.data, 0, Counter())][:args.rows]
    corpus = out / "corpus.txt"
    corpus.write_text("".join(f"{line}\n" for line in lines))
    cfg = validate_config(config(samples, out / "run", corpus, teacher_dir, args))
    shutil.rmtree(out / "run", ignore_errors=True)

    bare_s, pad = bare_loop(teacher_dir, lines, args.batch_size, cfg.label.chunk_rows)
    pipe_s = hf_pipeline(teacher_dir, lines, args.batch_size)
    import ray

    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), log_to_driver=False)
    try:
        t0 = time.perf_counter()
        summary = run_step(cfg, Tracker.for_config(cfg), "label")
        xdray_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    labelled = summary["rows"] + summary["dev_rows"]
    result = {
        "bench": "label_throughput", "rows": len(lines), "dev_rows": summary["dev_rows"], "batch_size": args.batch_size,
        "actors": args.actors, "cpus_per_actor": args.cpus_per_actor, "cpu_count": os.cpu_count(),
        "sentences_per_s": round(labelled / xdray_s, 1), "bare_sentences_per_s": round(len(lines) / bare_s, 1),
        "pipeline_sentences_per_s": round(len(lines) / pipe_s, 1),
        "ratio_vs_bare": round(labelled / xdray_s / (len(lines) / bare_s), 3),
        "ratio_vs_pipeline": round(labelled / xdray_s / (len(lines) / pipe_s), 3),
        "tokens_per_s": summary["tokens_per_s"], "pad_fraction": summary["pad_fraction"],
        "bare_pad_fraction": round(pad, 4), "xdray_seconds": round(xdray_s, 1),
        "xdray_label_phase_seconds": summary["label_seconds"], "bare_seconds": round(bare_s, 1),
        "pipeline_seconds": round(pipe_s, 1),
    }
    if not args.no_rss:
        # both corpora cycle over the same 10k sample lines, so both hold the same longest rows: an actor's peak
        # is set by its largest padded batch, and a corpus that never meets the longest lines would peak lower
        pool = lines[::2][:10_000]
        for rows, key in ((10_000, "10k"), (100_000, "100k")):
            rss = rss_run(samples, out, pool, rows, teacher_dir, args)
            result[f"peak_rss_mb_{key}"] = rss["driver"]
            result[f"peak_actor_rss_mb_{key}"] = rss["actor"]
        result["rss_ratio_driver"] = round(result["peak_rss_mb_100k"] / result["peak_rss_mb_10k"], 3)
        result["rss_ratio_actor"] = round(result["peak_actor_rss_mb_100k"] / result["peak_actor_rss_mb_10k"], 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
