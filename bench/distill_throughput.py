"""Distillation throughput: `xdray distill` (Ray Train + DeepSpeed) vs a bare single-process PyTorch loop with
``torch.optim.AdamW``, same student, data, batch size and CPU, in one run.

- data: the sample transfer corpus (first ``--rows`` cleaned sentences), labelled once by `xdray label` with
  MiniLM-L6 (the package's weights, a seeded 2-class head; throughput does not depend on its values).
- student: L3-H256-A4-F1024 (the quality benchmark's), PCA embeddings; one stage of logits MSE on the transfer
  set for ``--epochs`` epochs.
- xdray, 1 worker with every core (``cpus_per_worker`` = cores, so torch gets as many threads as the bare loop),
  under ``--zero-stage`` and under ZeRO-0 (one rank has nothing to partition, so ZeRO-0 is what a 1-worker job
  would use), and 2 workers x 1 core under ``--zero-stage``. ``samples_per_s`` is what the workers measure over
  their training loops (Ray Data shard iteration, collation, forward, DeepSpeed backward/step; dev evaluation
  excluded, as in the bare loop);
  ``wall_s`` includes Ray Train start-up, engine build, dev evaluation, export and MLflow.
- bare: the same ``collate``/``Objective``/student code, AdamW over the same parameter groups, gradient
  clipping 1.0, a per-epoch shuffle of the Parquet table; timed over the training loop. ``ratio_vs_bare`` is
  against this loop as anyone would write it (glibc's default allocator settings); it runs a second time after
  ``keep_freed_memory``, the allocator setting xdray's workers use, for ``ratio_vs_bare_kept``.

Prints one JSON line. ``python bench/distill_throughput.py [--rows 3000] [--epochs 2] [--zero-stage 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from label_throughput import teacher  # the same seeded-head teacher as the labelling benchmark
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from xdray.common.memory import keep_freed_memory
from xdray.common.tracking import Tracker
from xdray.config import StudentConfig, validate_config
from xdray.data.samples import prepare_samples
from xdray.distill.batches import collate, model_inputs, table_batches
from xdray.distill.objective import DistillModule, Objective
from xdray.distill.schedule import TorchBackend
from xdray.distill.student import build_student
from xdray.label.corpus import clean_rows
from xdray.pipeline import run_step

MAX_LENGTH = 64
STUDENT = {"layers": 3, "hidden": 256, "heads": 4, "intermediate": 1024}


def config(samples: Path, out: Path, corpus: Path, teacher_dir: Path, args, workers: int, cpus: float,
           zero_stage: int | None = None) -> dict:
    movie = samples / "movie"
    return {
        "output_dir": str(out), "seed": 0,
        "mlflow": {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "xdray-bench-distill"},
        "data": {"train": str(movie / "train.tsv"), "dev": str(movie / "dev.tsv"), "test": str(movie / "test.tsv"),
                 "transfer": [str(corpus)], "max_length": MAX_LENGTH},
        "teacher": {"backbone": str(teacher_dir)},
        "label": {"teacher": str(teacher_dir), "batch_size": 64, "actors": 2, "hidden_states": "none"},
        "distill": {
            "student": STUDENT, "workers": workers, "cpus_per_worker": cpus, "batch_size": args.batch_size,
            "lr": 1e-3, "deepspeed": {"zero_stage": args.zero_stage if zero_stage is None else zero_stage},
            "stages": [{"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": args.epochs}],
            "labels": str(out.parent / "labelled" / "label" / "data"),
        },
    }


def bare_loop(teacher_dir: Path, labels: Path, args, threads: int) -> float:
    """Samples/s of the plainest loop doing the same training work in one process."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    table = pq.read_table(labels / "transfer")
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    module = DistillModule(build_student(StudentConfig(**STUDENT), model, 2, seed=0), model.config.hidden_size, 0)
    del model
    backend = TorchBackend(module, lr=1e-3, grad_clip=1.0)
    objective = Objective(losses=("logits_mse",))
    module.train()
    rng, seconds, samples = np.random.default_rng(0), 0.0, 0
    for _ in range(args.epochs):
        shuffled = table.take(rng.permutation(table.num_rows))
        t0 = time.perf_counter()
        for raw in table_batches(shuffled, args.batch_size):
            batch = collate(raw, tokenizer, MAX_LENGTH, "cpu")
            backend.step(objective(module(**model_inputs(batch)), batch)["total"])
            samples += len(batch["input_ids"])
        seconds += time.perf_counter() - t0
    return samples / seconds


def xdray_run(cfg_raw: dict) -> dict:
    cfg = validate_config(cfg_raw)
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_step(cfg, Tracker.for_config(cfg), "distill")
    return {"samples_per_s": summary["train_samples_per_s"], "wall_s": round(time.perf_counter() - t0, 1),
            "rows": sum(r["samples"] for r in summary["history"]) // len(summary["history"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/distill"))
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--zero-stage", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    samples = Path("data/samples")
    prepare_samples(samples)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = teacher(samples, out)
    cores = os.cpu_count() or 1

    base = config(samples, out / "labelled", samples / "transfer.txt", teacher_dir, args, 1, cores)
    lines = [text for _, text, _ in clean_rows(validate_config(base).data, 0, Counter())][:args.rows]
    corpus = out / "corpus.txt"
    corpus.write_text("".join(f"{line}\n" for line in lines))
    labelled = validate_config(config(samples, out / "labelled", corpus, teacher_dir, args, 1, cores))
    import ray

    ray.init(address="local", num_cpus=max(4, cores), log_to_driver=False)
    try:
        if not (labelled.labels_dir / "_manifest.json").is_file():
            run_step(labelled, Tracker.for_config(labelled), "label")
        one = xdray_run(config(samples, out / "one", corpus, teacher_dir, args, 1, cores))
        one_zero0 = xdray_run(config(samples, out / "one-zero0", corpus, teacher_dir, args, 1, cores, zero_stage=0))
        two = xdray_run(config(samples, out / "two", corpus, teacher_dir, args, 2, 1))
    finally:
        ray.shutdown()
    bare = bare_loop(teacher_dir, labelled.labels_dir, args, cores)
    keep_freed_memory()  # for good: this process only measures from here on
    bare_kept = bare_loop(teacher_dir, labelled.labels_dir, args, cores)
    print(json.dumps({
        "bench": "distill_throughput", "rows": one["rows"], "epochs": args.epochs, "batch_size": args.batch_size,
        "zero_stage": args.zero_stage, "student": STUDENT, "cpu_count": cores,
        "samples_per_s": one["samples_per_s"], "bare_samples_per_s": round(bare, 1),
        "ratio_vs_bare": round(one["samples_per_s"] / bare, 3), "wall_s": one["wall_s"],
        "samples_per_s_zero0": one_zero0["samples_per_s"],
        "ratio_zero0_vs_bare": round(one_zero0["samples_per_s"] / bare, 3), "wall_s_zero0": one_zero0["wall_s"],
        "bare_kept_samples_per_s": round(bare_kept, 1), "ratio_vs_bare_kept": round(one["samples_per_s"] / bare_kept, 3),
        "samples_per_s_2_workers": two["samples_per_s"], "ratio_2_workers_vs_bare": round(two["samples_per_s"] / bare, 3),
        "wall_s_2_workers": two["wall_s"],
    }), flush=True)


if __name__ == "__main__":
    main()
