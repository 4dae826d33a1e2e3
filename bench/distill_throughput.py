"""Distillation throughput: `xdray distill` (Ray Train + DeepSpeed) vs a bare single-process PyTorch loop with
``torch.optim.AdamW``, same student, data, batch size and CPU, in one run.

- data: the sample transfer corpus (first ``--rows`` cleaned sentences), labelled once by `xdray label` with
  MiniLM-L6 (the package's weights, a seeded 2-class head; throughput does not depend on its values).
- student: L3-H256-A4-F1024 (the quality benchmark's), PCA embeddings; one stage of logits MSE on the transfer
  set for ``--epochs`` epochs.
- xdray, 1 worker with every core (``cpus_per_worker`` = cores, so torch gets as many threads as the bare loop),
  at the default ``zero_stage: auto`` (ZeRO-0 for one worker: ``ratio_vs_bare``) and at ZeRO-2
  (``ratio_vs_bare_zero2``), and 2 workers x 1 core (auto: ZeRO-2). ``samples_per_s`` is what the workers
  measure over their training loops (reading their rows, collation, forward, DeepSpeed backward/step; dev
  evaluation excluded, as in the bare loop); ``wall_s`` includes Ray Train start-up, engine build, dev
  evaluation, export and MLflow.
- ``frozen_speedup``: one more 1-worker run whose stage unfreezes gradually, one epoch per phase: samples/s of
  its first phase (top block + head trained, the rest frozen) over its last (every unit trained).
- ``flops_share_of_peak``: the bare loop's FLOP/s (3 x the forward FLOPs from the model shapes, per padded
  token) over a large fp32 ``torch.mm``'s, timed in this run on the same threads.
- bare: the same ``collate``/``Objective``/student code, AdamW over the same parameter groups, gradient
  clipping 1.0, a per-epoch shuffle of the Parquet table; timed over the training loop. ``ratio_vs_bare`` is
  against this loop as anyone would write it (glibc's default allocator settings); it runs a second time after
  ``keep_freed_memory``, the allocator setting xdray's workers use, for ``ratio_vs_bare_kept``.

Prints one JSON line. ``python bench/distill_throughput.py [--rows 3000] [--epochs 2]``
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
from gpu_smoke import forward_flops_per_token
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
           zero_stage: int | str = "auto", gradual: bool = False) -> dict:
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
            "lr": 1e-3, "deepspeed": {"zero_stage": zero_stage},
            "stages": [{"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": 1 if gradual else args.epochs,
                        "unfreeze": "gradual" if gradual else "all"}],
            "labels": str(out.parent / "labelled" / "label" / "data"),
        },
    }


def bare_loop(teacher_dir: Path, labels: Path, args, threads: int) -> tuple[float, float]:
    """Samples/s and FLOP/s of the plainest loop doing the same training work in one process."""
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
    rng, seconds, samples, flops = np.random.default_rng(0), 0.0, 0, 0.0
    for _ in range(args.epochs):
        shuffled = table.take(rng.permutation(table.num_rows))
        t0 = time.perf_counter()
        for raw in table_batches(shuffled, args.batch_size):
            batch = collate(raw, tokenizer, MAX_LENGTH, "cpu")
            backend.step(objective(module(**model_inputs(batch)), batch)["total"])
            samples += len(batch["input_ids"])
            rows, length = batch["input_ids"].shape
            flops += 3 * forward_flops_per_token(module.student, length) * rows * length  # forward + backward
        seconds += time.perf_counter() - t0
    return samples / seconds, flops / seconds


def matmul_peak(threads: int, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of a large fp32 matrix product on ``threads`` threads: what this CPU can do at best."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def xdray_run(cfg_raw: dict) -> dict:
    cfg = validate_config(cfg_raw)
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_step(cfg, Tracker.for_config(cfg), "distill")
    trained = json.loads((Path(summary["model_dir"]) / "xdray_train.json").read_text())
    return {"samples_per_s": summary["train_samples_per_s"], "wall_s": round(time.perf_counter() - t0, 1),
            "rows": sum(r["samples"] for r in summary["history"]) // len(summary["history"]),
            "zero_stage": trained["zero_stage"],
            "phases": {r["stage"]: r["samples_per_s"] for r in summary["history"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/distill"))
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
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
        zero2 = xdray_run(config(samples, out / "one-zero2", corpus, teacher_dir, args, 1, cores, zero_stage=2))
        two = xdray_run(config(samples, out / "two", corpus, teacher_dir, args, 2, 1))
        frozen = xdray_run(config(samples, out / "frozen", corpus, teacher_dir, args, 1, cores, gradual=True))
    finally:
        ray.shutdown()
    bare, bare_flops = bare_loop(teacher_dir, labelled.labels_dir, args, cores)
    peak = matmul_peak(cores)
    keep_freed_memory()  # for good: this process only measures from here on
    bare_kept, _ = bare_loop(teacher_dir, labelled.labels_dir, args, cores)
    phases = list(frozen["phases"].values())  # logits/block.2 (top block + head), ..., logits/embeddings (all)
    print(json.dumps({
        "bench": "distill_throughput", "rows": one["rows"], "epochs": args.epochs, "batch_size": args.batch_size,
        "zero_stage": one["zero_stage"], "student": STUDENT, "cpu_count": cores,
        "samples_per_s": one["samples_per_s"], "bare_samples_per_s": round(bare, 1),
        "ratio_vs_bare": round(one["samples_per_s"] / bare, 3), "wall_s": one["wall_s"],
        "samples_per_s_zero2": zero2["samples_per_s"], "ratio_vs_bare_zero2": round(zero2["samples_per_s"] / bare, 3),
        "bare_kept_samples_per_s": round(bare_kept, 1), "ratio_vs_bare_kept": round(one["samples_per_s"] / bare_kept, 3),
        "samples_per_s_2_workers": two["samples_per_s"], "ratio_2_workers_vs_bare": round(two["samples_per_s"] / bare, 3),
        "frozen_phases_samples_per_s": {k: round(v, 1) for k, v in frozen["phases"].items()},
        "frozen_speedup": round(phases[0] / phases[-1], 3),
        "bare_gflops": round(bare_flops / 1e9, 2), "matmul_peak_gflops": round(peak / 1e9, 2),
        "flops_share_of_peak": round(bare_flops / peak, 3),
    }), flush=True)


if __name__ == "__main__":
    main()
