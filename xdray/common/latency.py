"""The latency of a saved HF model: measured where the device is, in a Ray task that reserves it
(``measure_latency``), never in the driver, whose node may have no GPU (a cluster's head)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from xdray.common.hf import load_classifier

Loader = Callable[[str], tuple]
"""``loader(path)`` → (model, tokenizer): anything called as ``model(**encoding)``."""


def measure_latency(model_dirs: list[Path], texts: list[str], max_length: int, batch_sizes: list[int],
                    threads: int = 1, device: str = "cpu", resources: dict[str, float] | None = None,
                    loader: Loader | list[Loader] = load_classifier, rounds: int = 1) -> tuple[list[dict[int, float]], str]:
    """``latency_ms`` of each model, one after the other in one Ray task that reserves what it measures on:
    ``threads`` CPUs, a GPU for ``cuda``, and any custom ``resources`` (the nodes whose hardware you serve on).
    ``loader`` is one for all models or one per model. With several ``rounds`` the order rotates each round and
    each figure is the model's fastest round, so no model always runs first or last. Returns the figures and the
    node's id. Scheduled outside any placement group (a Tune trial's holds only its driver's fraction of a CPU)."""
    import ray

    task = ray.remote(_latency_on_node).options(
        num_cpus=threads, num_gpus=1 if device == "cuda" else 0, resources=resources or {},
        scheduling_strategy="DEFAULT")
    loaders = loader if isinstance(loader, list) else [loader] * len(model_dirs)
    return ray.get(task.remote([str(p) for p in model_dirs], texts, max_length, batch_sizes, threads, device, loaders,
                               rounds))


def _latency_on_node(model_dirs: list[str], texts: list[str], max_length: int, batch_sizes: list[int], threads: int,
                     device: str, loaders: list[Loader], rounds: int) -> tuple[list[dict[int, float]], str]:
    import ray

    best: list[dict[int, float]] = [{} for _ in model_dirs]
    for r in range(rounds):
        order = list(range(len(model_dirs)))
        for i in order[r % len(order):] + order[:r % len(order)]:
            ms = latency_ms(Path(model_dirs[i]), texts, max_length, batch_sizes, threads, device, loader=loaders[i])
            best[i] = {b: min(v, best[i].get(b, v)) for b, v in ms.items()}
    return best, ray.get_runtime_context().get_node_id()


def cpu_latency_ms(model_dir: Path, texts: list[str], max_length: int, threads: int = 1) -> float:
    """Milliseconds per sentence at batch size 1 on ``threads`` CPU threads (how a small service runs), in this
    process: for benchmarks timing on an idle local machine; steps use ``measure_latency``."""
    return latency_ms(model_dir, texts, max_length, [1], threads)[1]


@torch.inference_mode()
def latency_ms(model_dir: Path, texts: list[str], max_length: int, batch_sizes: list[int], threads: int = 1,
               device: str = "cpu", warmup: int = 5, repeats: int = 3, loader: Loader = load_classifier) -> dict[int, float]:
    """Milliseconds per sentence for each batch size: the fastest of ``repeats`` passes over ``texts`` (in
    order, padded per batch), after ``warmup`` batches. The minimum is the least disturbed by other work.
    ``loader(path)`` gives (model, tokenizer): a sequence classifier unless told otherwise."""
    model, tokenizer = loader(str(model_dir))
    model.eval().to(device)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {}
        for size in batch_sizes:
            batches = [tokenizer(texts[i:i + size], truncation=True, max_length=max_length, padding=True,
                                 return_tensors="pt").to(device) for i in range(0, len(texts), size)]
            for enc in (batches * warmup)[:warmup]:
                model(**enc)
            passes = []
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                for enc in batches:
                    model(**enc)
                _sync(device)
                passes.append(time.perf_counter() - t0)
            out[size] = min(passes) * 1000 / len(texts)
        return out
    finally:
        torch.set_num_threads(previous)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
