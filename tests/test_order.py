"""The training order: a seeded shuffle per epoch, the same on every rank, disjoint equal shares, and a resume
that replays exactly the rows an uninterrupted epoch trains on (row ids compared)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xdray.train.order import Rows, blocks_of, epoch_batches, parquet_blocks, plan_epoch, read_parquet_dir, table_blocks


def ids(blocks, seed, epoch, rank, world, batch_size=8, skip=0) -> list[int]:
    plan = plan_epoch(blocks, seed, epoch, rank, world, batch_size)
    return [int(i) for b in epoch_batches(blocks, plan, skip) for i in b["id"]]


@pytest.fixture
def chunks(tmp_path):
    """The labelling job's layout in miniature, in corpus order: 7 files of 2 row groups, 37-40 rows each."""
    start = 0
    for f in range(7):
        n = 37 + f % 4
        table = pa.table({"id": np.arange(start, start + 2 * n), "text": [f"row {i}" for i in range(2 * n)]})
        pq.write_table(table, tmp_path / f"chunk-{f:06d}.parquet", row_group_size=n)
        start += 2 * n
    return tmp_path, start


def test_epochs_are_shuffled_globally_reproducibly_and_split_into_disjoint_equal_shares(chunks):
    directory, total = chunks
    blocks = parquet_blocks(directory, window=100)
    assert len(blocks.sizes) == 14 and blocks.sizes.sum() == total
    first, again, second = ids(blocks, 0, 0, 0, 1), ids(blocks, 0, 0, 0, 1), ids(blocks, 0, 1, 0, 1)
    assert first == again and first != second and sorted(first) != first
    assert len(set(first)) == len(first) >= total - 8  # every row but the last incomplete batch
    corpus_order = np.corrcoef(np.arange(len(first)), first)[0, 1]
    assert abs(corpus_order) < 0.5  # not the corpus order (sources concatenated) with local jitter
    assert ids(blocks, 1, 0, 0, 1) != first  # another seed, another order
    shares = [ids(blocks, 0, 0, r, 3) for r in range(3)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) % 8 == 0  # the same number of batches
    assert not set(shares[0]) & set(shares[1]) and not set(shares[1]) & set(shares[2])


def test_a_resumed_epoch_trains_on_exactly_the_rows_the_uninterrupted_one_does(chunks):
    directory, _ = chunks
    blocks = parquet_blocks(directory, window=60)
    for rank in (0, 1):
        whole = ids(blocks, 3, 2, rank, 2)
        assert ids(blocks, 3, 2, rank, 2, skip=5) == whole[5 * 8:]  # batch 5 onwards, nothing re-read before


def test_tables_and_sets_of_few_blocks_are_shared_row_by_row(tmp_path):
    table = pa.table({"id": np.arange(300)})
    pq.write_table(table, tmp_path / "chunk-000000.parquet")  # a transfer set smaller than one chunk
    for blocks in (table_blocks(table), parquet_blocks(tmp_path)):
        a, b = ids(blocks, 0, 0, 0, 2), ids(blocks, 0, 0, 1, 2)
        assert len(a) == len(b) == 144 and not set(a) & set(b)  # 150 rows each: 18 batches of 8
        assert ids(blocks, 0, 1, 0, 2) != a and sorted(a) != a


def test_holding_a_parquet_set_in_memory_does_not_change_its_order(chunks):
    """``distill.transfer_cache: memory`` and ``stream`` train on the same rows in the same order."""
    directory, _ = chunks
    streamed = blocks_of(Rows(parquet=str(directory)), None)
    held = blocks_of(Rows(table="ref", parquet=str(directory)), read_parquet_dir(directory))
    for rank in (0, 1):
        assert ids(held, 0, 4, rank, 2) == ids(streamed, 0, 4, rank, 2)
