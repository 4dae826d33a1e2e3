"""Files every step writes: atomically (a crash never leaves a half file that looks complete), and the step
summaries whose presence marks a step complete."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xdray.config import XdrayConfig


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


def weights_bytes(model_dir: Path) -> int:
    """A saved HF model's size on disk: its weight files."""
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))


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
