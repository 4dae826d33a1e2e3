"""Step plumbing: the Ray session, summaries written atomically, and input checks done before Ray starts."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xdray.config import ConfigError, XdrayConfig, looks_local

STEPS = ("teacher", "label", "distill", "search")


@contextmanager
def ray_session(cfg: XdrayConfig) -> Iterator[None]:
    """Connect to ``ray.address``, or start a local instance; reuse one that is already running in-process.

    With no address, ``address="local"`` keeps Ray from joining whatever ``ray_current_cluster`` an earlier
    ``ray start`` left on the machine (live or dead): ``ray.address=auto`` is how a user asks for that."""
    import ray

    if ray.is_initialized():
        yield
        return
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):  # a Ray Job's driver gets RAY_ADDRESS from Ray
        ray.init(address=cfg.ray.address)
    else:
        # Train workers and actors reserve whole CPUs; a few extra logical CPUs keep Ray Data's read and
        # write tasks from starving on a small machine (torch threads follow each worker's own reservation).
        ray.init(address="local", num_cpus=cfg.ray.num_cpus or max(4, os.cpu_count() or 1))
    try:
        yield
    finally:
        ray.shutdown()


def summary_path(cfg: XdrayConfig, step: str) -> Path:
    return cfg.step_dir(step) / "summary.json"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary name beside ``path`` to write to, renamed to ``path`` when the block completes: a crash
    never leaves a half file that looks complete (or that a directory reader such as pyarrow would pick up)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    yield tmp
    os.replace(tmp, path)


def write_json(path: Path, value: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    return path


def file_stamp(path: Path) -> dict:
    """Size and modification time of a file (or of every file under a directory): inputs that changed restart a
    resumable job instead of continuing it."""
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
    return {"bytes": sum(p.stat().st_size for p in files), "mtime_ns": max(p.stat().st_mtime_ns for p in files)}


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_summary(cfg: XdrayConfig, step: str, summary: dict) -> Path:
    """Written last and atomically: its presence is what marks a step complete."""
    return write_json(summary_path(cfg, step), summary)


def staging_dir(dest: Path) -> Path:
    """An empty sibling of ``dest`` to build into; ``replace_dir`` then swaps it in whole."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put a finished directory in place of ``dest``: a crash never leaves a partial one under that name."""
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def read_summary(cfg: XdrayConfig, step: str) -> dict | None:
    return read_json(summary_path(cfg, step))


def pipeline_steps(cfg: XdrayConfig) -> tuple[str, ...]:
    """What ``xdray pipeline`` runs: the distillation steps when the config has a source task, then transfer
    when it has target tasks."""
    return (STEPS if cfg.data is not None else ()) + (("transfer",) if cfg.transfer is not None else ())


def check_inputs(cfg: XdrayConfig, steps: tuple[str, ...]) -> None:
    """Fail before any Ray work when an input of ``steps`` is missing (upstream steps in ``steps`` excused)."""
    if "transfer" in steps:
        _check_transfer(cfg, "distill" in steps)
    if set(steps) <= {"transfer"}:
        return
    for key in ("data", "teacher"):
        if getattr(cfg, key) is None:
            raise ConfigError(f"{key}: required for xdray {' '.join(steps)}; fix: add the {key} section "
                              "(see jobs/quickstart.yaml)")
    need_labeled = {"teacher", "distill", "search"} & set(steps)
    if need_labeled:
        for key in ("train", "dev", "test"):
            _must_exist(getattr(cfg.data, key), f"data.{key}")
    if "teacher" in steps:
        backbone = cfg.teacher.backbone
        if looks_local(backbone) and not Path(backbone).exists():
            raise ConfigError(
                f"teacher.backbone: directory not found: {backbone}; fix: run `xdray data samples` or give a "
                "local HF model directory or hub id"
            )
    if "label" in steps:
        for i, source in enumerate(cfg.data.transfer):
            if source.path is not None:
                _must_exist(source.path, f"data.transfer[{i}]")
    if ({"label", "distill", "search"} & set(steps)) and "teacher" not in steps:
        _must_exist(cfg.teacher_dir / "config.json", "label.teacher", "run `xdray teacher` first or set label.teacher")
    transfer = {"distill": any(s.data == "transfer" for s in cfg.distill.stages),
                "search": any(s.data == "transfer" for stages in cfg.search_schedules().values() for s in stages)}
    if any(transfer.get(step) for step in steps) and "label" not in steps:  # stages that read the labelled Parquet
        _must_exist(cfg.labels_dir / "_manifest.json", "distill.labels", "run `xdray label` first or set distill.labels")


def _check_transfer(cfg: XdrayConfig, distilled_here: bool) -> None:
    if cfg.transfer is None:
        raise ConfigError("transfer: required for xdray transfer; fix: add a transfer section with tasks "
                          "(see jobs/transfer_quickstart.yaml)")
    student = cfg.transfer_student
    if not distilled_here and looks_local(student) and not Path(student, "config.json").exists():
        fix = "run `xdray distill` first" if cfg.transfer.student is None else "give a local HF model directory or hub id"
        raise ConfigError(f"transfer.student: not found: {student}; fix: {fix}")
    from xdray.transfer.tasks import load_task

    for i, task in enumerate(cfg.transfer.tasks):
        for key in ("train", "dev", "test"):
            if getattr(task, key) is not None:
                _must_exist(getattr(task, key), f"transfer.tasks.{i}.{key}",
                            "run `xdray data transfer-sets` or correct the path")
        if task.preset is None:  # every label problem, before Ray or MLflow start (presets load in the step)
            load_task(task, cfg.seed)


def _must_exist(path: Path, key: str, fix: str = "run `xdray data samples` or correct the path") -> None:
    if not path.exists():
        raise ConfigError(f"{key}: not found: {path}; fix: {fix}")


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ``getrusage``: its ``ru_maxrss`` survives ``exec``, so a
    subprocess would report its parent's peak at fork time."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def keep_freed_memory() -> bool:
    """Keep freed blocks in this process's heap instead of handing them back to the kernel (glibc only).

    glibc serves every block above its mmap threshold (32 MiB at most) with a fresh ``mmap`` and unmaps it on
    free, so a training step that allocates the same large buffers every time (DeepSpeed's flat ZeRO gradient
    partitions, the fp64 copy for its gradient norm, a 30k-row embedding gradient) page-faults them in anew:
    on CPU that was 13–18% of a ZeRO-2 step in the kernel. This is what jemalloc or tcmalloc, the
    allocators recommended for PyTorch on CPU, do too. Returns whether the settings took (False off glibc)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
