"""What share of a small machine Ray itself takes while one Ray Train worker computes: the ceiling on
``distill_throughput``'s ``ratio_vs_bare`` for a 1-worker job that has every core.

The same fixed fp32 workload (``torch.mm`` of two 1024² matrices, in a loop, on every core's thread) runs for
``--seconds`` in this process (bare), then inside a 1-worker Ray Train v2 job on a local Ray started as
``xdray`` starts one (``address=local``, at least 4 logical CPUs) with every core reserved, then bare again.
While the worker computes, the CPU time of every process on the machine is sampled from ``/proc`` over the
middle of the window: the worker's share, and that of everything else (Ray's GCS, raylet, dashboard and its
agents, the Train controller and its support actors, idle workers).

Prints one JSON line: ``ratio`` (the Ray Train worker's matmuls/s over the mean of the two bare runs),
``worker_cpu_share`` and ``others_cpu_share`` (fractions of the machine), and the busiest other processes.
``--no-dashboard`` starts Ray without its dashboard (Ray Jobs need it, so a cluster cannot do without it).

    python bench/ray_share.py [--seconds 40] [--no-dashboard]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

N = 1024


def matmuls_per_s(seconds: float, threads: int) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(N, N), torch.randn(N, N)
    torch.mm(a, b)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        done += 1
    return done / (time.perf_counter() - t0)


def cpu_times() -> dict[int, tuple[float, str]]:
    """Every process's user + system CPU seconds and its command line (first 80 characters)."""
    out = {}
    for proc in psutil.process_iter(["cpu_times", "cmdline"]):
        times, cmdline = proc.info["cpu_times"], proc.info["cmdline"]
        if times is not None:  # None: access denied, or the process ended while being read
            out[proc.pid] = (times.user + times.system, " ".join(cmdline or []).strip()[:80])
    return out


def sample(start: float, length: float, into: dict) -> None:
    time.sleep(start)
    before = cpu_times()
    t0 = time.perf_counter()
    time.sleep(length)
    after, wall = cpu_times(), time.perf_counter() - t0
    into["shares"] = {pid: ((after[pid][0] - before[pid][0]) / wall, after[pid][1]) for pid in after if pid in before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--no-dashboard", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    bare_before = matmuls_per_s(args.seconds, cores)

    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address="local", num_cpus=max(4, cores), include_dashboard=not args.no_dashboard,
             log_to_driver=False)
    seconds = args.seconds
    try:
        figure = Path(tempfile.mkdtemp()) / "matmuls_per_s"  # Train v2's Result carries checkpointed metrics only

        def work(config: dict) -> None:
            figure.write_text(str(matmuls_per_s(seconds, cores)))

        sampled: dict = {}
        trainer = TorchTrainer(work, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cores}))

        # the worker's loop starts after Ray Train's start-up: sample once the worker process is computing
        def start_watch() -> None:
            deadline = time.time() + 300
            while time.time() < deadline:
                if any(c.startswith("ray::RayTrainWorker") for _, c in cpu_times().values()):
                    sample(min(5.0, seconds / 4), seconds / 2, sampled)
                    return
                time.sleep(0.5)

        watcher = threading.Thread(target=start_watch, daemon=True)
        watcher.start()
        trainer.fit()
        watcher.join(timeout=seconds)
    finally:
        ray.shutdown()
    bare_after = matmuls_per_s(args.seconds, cores)
    in_ray = float(figure.read_text())
    if "shares" not in sampled:
        raise SystemExit("ray_share: the Ray Train worker was never seen computing, so no CPU shares were sampled")
    worker, others = 0.0, {}
    for share, command in sampled["shares"].values():  # this driver counts as an other: xdray's pipeline is one too
        if command.startswith("ray::RayTrainWorker"):
            worker += share
        elif share > 0:
            others.setdefault(command or "?", []).append(share)
    print(json.dumps({
        "bench": "ray_share", "cpu_count": cores, "seconds": args.seconds, "dashboard": not args.no_dashboard,
        "bare_matmuls_per_s": [round(bare_before, 2), round(bare_after, 2)],
        "ray_matmuls_per_s": round(in_ray, 2),
        "ratio": round(in_ray / ((bare_before + bare_after) / 2), 3),
        "worker_cpu_share": round(worker / cores, 3),
        "others_cpu_share": round(sum(map(sum, others.values())) / cores, 3),
        "others_processes": sum(map(len, others.values())),
        "busiest_others": {c: round(sum(v) / cores, 4) for c, v in sorted(others.items(), key=lambda kv: -sum(kv[1]))[:8]},
    }))


if __name__ == "__main__":
    main()
