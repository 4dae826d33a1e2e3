"""The order a worker reads its training rows in: a seeded shuffle per epoch that every rank agrees on and a
resumed run replays exactly.

Ray Data's streaming split hands blocks to whichever rank asks first, so which rows a rank trains on, and in
what order, cannot be reproduced. xdray's workers read their own rows instead, the way torch's
``DistributedSampler`` with ``set_epoch`` does:

- a training set is a list of blocks: the row groups of the labelled Parquet chunks (``label.chunk_rows`` rows
  each; the same blocks when the set is held in the object store, so caching does not change the order), or
  single rows of an in-memory table (the labeled train split);
- each epoch permutes the blocks (seeded by ``seed`` and the epoch) and deals them to the ranks in turn (rows,
  when there are fewer than two blocks per rank), then shuffles each rank's rows within windows of ``window``
  rows: a table of single rows is one permutation of all of them; a streamed set holds about three windows;
- every rank trains the same number of batches (the smallest share's rows // batch size); the rest of the
  epoch is left out, as Ray Data's equal split did.

Planning an epoch needs only the block sizes, so a resumed epoch skips its first batches without reading them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WINDOW_ROWS = 16384


@dataclass
class Blocks:
    """A training set as blocks: their row counts and a reader of several blocks' rows, concatenated."""

    sizes: np.ndarray
    read: Callable[[np.ndarray], pa.Table]
    window: int = WINDOW_ROWS
    """Rows shuffled together."""


@dataclass(frozen=True)
class Rows:
    """Where a training set is, as it travels to the workers: an in-memory table (an ObjectRef of one), a Parquet
    directory on storage every node sees, or both (the directory's rows held in memory: same blocks, same
    order as streaming them)."""

    table: Any = None
    parquet: str | None = None


def table_blocks(table: pa.Table) -> Blocks:
    """Every row its own block, all in one window: an in-memory table costs nothing to index."""
    return Blocks(np.ones(table.num_rows, dtype=np.int64), lambda ids: table.take(pa.array(ids)),
                  max(table.num_rows, 1))


def parquet_blocks(directory: Path, window: int = WINDOW_ROWS, table: pa.Table | None = None) -> Blocks:
    """The row groups of every ``*.parquet`` file under ``directory``, in file order; read from the files, or
    from ``table`` when it holds the directory's rows (``read_parquet_dir``)."""
    groups = []
    for f in parquet_files(directory):
        meta = pq.ParquetFile(f).metadata
        groups += [(f, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    sizes = np.array([n for *_, n in groups], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])

    def read(ids: np.ndarray) -> pa.Table:
        if table is not None:
            return table.take(pa.array(np.concatenate([np.arange(starts[b], starts[b + 1]) for b in ids])))
        return pa.concat_tables([pq.ParquetFile(groups[b][0]).read_row_group(groups[b][1]) for b in ids])

    return Blocks(sizes, read, window)


def blocks_of(rows: Rows, table: pa.Table | None) -> Blocks:
    """The blocks of ``rows`` (``table``: its in-memory table, fetched by the caller)."""
    return parquet_blocks(Path(rows.parquet), table=table) if rows.parquet else table_blocks(table)


def parquet_files(directory: Path) -> list[Path]:
    """A Parquet directory's data files in a fixed order (what the labelling job wrote: ``chunk-*.parquet``)."""
    return sorted(Path(directory).rglob("*.parquet"))


def read_parquet_dir(directory: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in parquet_files(directory)])


@dataclass
class EpochPlan:
    """One rank's epoch: its windows (block ids, read together) and, for each row it trains on in order, the
    window it is in and its position there."""

    windows: list[np.ndarray]
    window_of: np.ndarray
    position: np.ndarray
    batch_size: int

    @property
    def batches(self) -> int:
        return len(self.window_of) // self.batch_size


def plan_epoch(blocks: Blocks, seed: int | Sequence[int], epoch: int, rank: int, world: int,
               batch_size: int) -> EpochPlan:
    """This rank's share of the epoch, in training order (see the module docstring). ``seed`` may be several
    integers (the run's seed and the phase's, say)."""
    sizes, window, seed = blocks.sizes, blocks.window, [int(s) for s in np.atleast_1d(seed)]
    order = np.random.default_rng([*seed, epoch]).permutation(len(sizes))
    by_block = len(sizes) >= 2 * world
    mine = order[rank::world] if by_block else order  # few large blocks: each rank keeps every world-th row
    cuts = _windows(sizes[mine], window)
    if by_block:
        rows = min(int(sizes[order[r::world]].sum()) for r in range(world))
    else:
        rows = sum(int(sizes[mine[a:b]].sum()) // world for a, b in cuts)
    rng = np.random.default_rng([*seed, epoch, rank])
    windows, window_of, position = [], [], []
    for w, (a, b) in enumerate(cuts):
        local = np.arange(int(sizes[mine[a:b]].sum()))
        local = local if by_block else local[rank::world]
        windows.append(mine[a:b])
        window_of.append(np.full(len(local), w))
        position.append(rng.permutation(local))
    n = rows // batch_size * batch_size

    def flat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)[:n] if parts else np.zeros(0, np.int64)

    return EpochPlan(windows, flat(window_of), flat(position), batch_size)


def _windows(sizes: np.ndarray, window: int) -> list[tuple[int, int]]:
    """Consecutive block ranges of at least ``window`` rows (the last may hold fewer)."""
    cuts, start, held = [], 0, 0
    for end, size in enumerate(sizes, start=1):
        held += int(size)
        if held >= window or end == len(sizes):
            cuts.append((start, end))
            start, held = end, 0
    return cuts


def epoch_batches(blocks: Blocks, plan: EpochPlan, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The plan's batches after its first ``skip``, as numpy columns (the layout ``distill.batches.collate``
    takes); the next window is read in the background while this one trains."""
    tables: dict[int, Future] = {}
    with ThreadPoolExecutor(1) as pool:
        def window(w: int) -> pa.Table:
            for v in (w, w + 1):
                if v < len(plan.windows) and v not in tables:
                    tables[v] = pool.submit(blocks.read, plan.windows[v])
            for old in [v for v in tables if v < w - 1]:
                del tables[old]
            return tables[w].result()

        for k in range(skip, plan.batches):
            rows = slice(k * plan.batch_size, (k + 1) * plan.batch_size)
            wins, pos = plan.window_of[rows], plan.position[rows]
            parts = [window(int(w)).take(pa.array(pos[wins == w])) for w in np.unique(wins)]
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            yield {name: col.to_numpy(zero_copy_only=False) for name, col in zip(table.column_names, table.columns)}
