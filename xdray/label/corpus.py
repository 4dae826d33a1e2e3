"""Unlabeled transfer corpora: streaming readers for every supported format, cleaning with counts, stable ids,
and the fixed-size chunks the labelling job hands to its teacher actors.

Everything here streams: memory holds one chunk of rows (plus, with dedupe, one 8-byte hash per kept row),
never the corpus. Reading, cleaning and chunking are deterministic, so a resumed run rebuilds the same chunks.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from xdray.common.files import atomic_path
from xdray.config import DataConfig, TransferSource
from xdray.errors import XdrayError

Row = tuple[str, str | None]
"""(text, text_pair); the pair is None for single-sentence tasks."""
READ_BATCH = 4096


def stable_id(source: str, text: str) -> str:
    """Content- and source-derived id: reruns and resumes match rows exactly."""
    return hashlib.blake2b(f"{source}\x00{text}".encode(), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Readers: each yields raw (text, pair) rows and counts undecodable and malformed rows in ``counts``.


def read_source(source: TransferSource, pairs: bool, counts: Counter) -> Iterator[Row]:
    kind = source.kind
    if kind in ("text", "jsonl", "csv", "tsv"):
        lines = _decoded_lines(source.path, counts)
        if kind == "text":
            return text_rows(lines, pairs)
        if kind == "jsonl":
            return _jsonl_rows(source, lines, pairs, counts)
        return _delimited_rows(source, lines, "," if kind == "csv" else "\t", pairs, counts)
    if kind == "parquet":
        return _parquet_rows(source, pairs)
    return _dataset_rows(source, pairs)


def _decoded_lines(path: Path, counts: Counter) -> Iterator[str]:
    with open(path, "rb") as f:
        yield from decode_lines(f, counts, first=True)


def decode_lines(raw_lines: Iterable[bytes], counts: Counter, first: bool) -> Iterator[str]:
    """Lines as str; a line with bytes that are not UTF-8 is decoded with U+FFFD and counted. ``first``: these
    are a file's first lines (a byte-order mark is dropped)."""
    for n, raw in enumerate(raw_lines):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            counts["invalid_utf8"] += 1
            line = raw.decode("utf-8", errors="replace")
        yield line.removeprefix("\ufeff") if first and n == 0 else line


def text_rows(lines: Iterable[str], pairs: bool) -> Iterator[Row]:
    return (_split_pair(line) if pairs else (line, None) for line in lines)


def _split_pair(line: str) -> Row:
    """``text<TAB>text_pair`` → (text, text_pair); a line without a TAB has an empty second sentence."""
    text, _, pair = line.rstrip("\r\n").partition("\t")
    return text, pair


def _columns(source: TransferSource, pairs: bool) -> list[str]:
    return [source.text_column, source.pair_column] if pairs else [source.text_column]


def _missing(source: TransferSource, column: str, where: str, have: Iterable[str]) -> XdrayError:
    fix = "pair_column" if column == source.pair_column and column != source.text_column else "text_column"
    return XdrayError(f"data.transfer {source.key}: {where} has no column {column!r} (it has {sorted(map(str, have))}); "
                      f"fix: set {fix} for this source")


def _jsonl_rows(source: TransferSource, lines: Iterator[str], pairs: bool, counts: Counter) -> Iterator[Row]:
    cols = _columns(source, pairs)
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            yield "", None
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            counts["malformed"] += 1
            continue
        if not isinstance(record, dict):
            counts["malformed"] += 1
            continue
        for col in cols:
            if col not in record:
                raise _missing(source, col, f"{source.path}:{n}", record)
        yield _text(record[cols[0]]), _text(record[cols[1]]) if pairs else None


def _delimited_rows(source: TransferSource, lines: Iterator[str], delimiter: str, pairs: bool, counts: Counter
                    ) -> Iterator[Row]:
    reader = csv.reader(lines, delimiter=delimiter)
    cols = _columns(source, pairs)
    if source.header:
        names = next(reader, [])
        for col in cols:
            if col not in names:
                raise _missing(source, col, f"{source.path} (header)", names)
        index = [names.index(c) for c in cols]
    else:
        if not all(c.isdigit() for c in cols):
            raise XdrayError(f"data.transfer {source.key}: header: false needs column indices, got {cols}; "
                             "fix: set text_column (and pair_column) to 0-based numbers such as \"0\"")
        index = [int(c) for c in cols]
    for record in reader:
        if not record:
            yield "", None
        elif len(record) <= max(index):
            counts["malformed"] += 1
        else:
            yield record[index[0]], record[index[1]] if pairs else None


def _parquet_rows(source: TransferSource, pairs: bool) -> Iterator[Row]:
    files = sorted(source.path.glob("*.parquet")) if source.path.is_dir() else [source.path]
    if not files:
        raise XdrayError(f"data.transfer {source.key}: no .parquet files in {source.path}; fix: check the path")
    cols = _columns(source, pairs)
    for path in files:
        data = pq.ParquetFile(path)
        for col in cols:
            if col not in data.schema_arrow.names:
                raise _missing(source, col, str(path), data.schema_arrow.names)
        for batch in data.iter_batches(batch_size=READ_BATCH, columns=cols):
            yield from _batch_rows(batch.to_pydict(), cols, pairs)


def _dataset_rows(source: TransferSource, pairs: bool) -> Iterator[Row]:
    """A ``save_to_disk`` directory (memory-mapped) or a hub dataset (streamed)."""
    import datasets

    cols = _columns(source, pairs)
    try:
        if source.hub is not None:
            data = datasets.load_dataset(source.hub, source.subset, split=source.split, streaming=True)
        else:
            data = datasets.load_from_disk(str(source.path))
            if isinstance(data, datasets.DatasetDict):
                if source.split not in data:
                    raise XdrayError(f"data.transfer {source.key}: no split {source.split!r} in {source.path} "
                                     f"(it has {sorted(data)}); fix: set split for this source")
                data = data[source.split]
    except XdrayError:
        raise
    except Exception as e:  # noqa: BLE001 - the datasets library raises many kinds; one line for the user
        where = f"hub dataset {source.hub!r}" if source.hub else str(source.path)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise XdrayError(f"data.transfer {source.key}: cannot read {where}: {first}; fix: check the name/path "
                         "(hub datasets need network access)") from None
    names = data.column_names or []
    for col in cols:
        if names and col not in names:
            raise _missing(source, col, f"the dataset ({source.split})", names)
    for batch in data.select_columns(cols).iter(batch_size=READ_BATCH):
        yield from _batch_rows(batch, cols, pairs)


def _batch_rows(batch: dict[str, list], cols: list[str], pairs: bool) -> Iterator[Row]:
    second = batch[cols[1]] if pairs else None
    for i, value in enumerate(batch[cols[0]]):
        yield _text(value), _text(second[i]) if pairs else None


def _text(value: object) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


# ---------------------------------------------------------------------------------------------------------
# Cleaning and ids


def clean_rows(data: DataConfig, seed: int, counts: Counter) -> Iterator[tuple[str, str, str | None]]:
    """(id, text, pair) for every row worth labelling, in corpus order (or a fixed-seed sample of
    ``max_transfer_rows`` of them); ``counts`` gets rows read, empty, invalid_utf8, malformed, duplicates."""
    rows = _cleaned(data, counts)
    if data.max_transfer_rows is None:
        yield from rows
        return
    # the rows with the smallest seeded hash of their id: a fixed random sample kept in memory O(limit)
    heap: list[tuple[int, int, tuple]] = []
    for n, row in enumerate(rows):
        item = (-int(stable_id(str(seed), row[0]), 16), n, row)
        if len(heap) < data.max_transfer_rows:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    if counts["kept"] > len(heap):
        counts["subsampled_to"] = len(heap)
    yield from (row for _, _, row in sorted(heap, key=lambda item: item[1]))


def _cleaned(data: DataConfig, counts: Counter) -> Iterator[tuple[str, str, str | None]]:
    seen: set[int] = set()
    for source in data.transfer:
        for row in cleaned_rows(source, read_source(source, data.paired, counts), 0, data.cleaning.dedupe, counts):
            if data.cleaning.dedupe:
                key = int(row[0], 16)
                if key in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(key)
            counts["kept"] += 1
            yield row


def cleaned_rows(source: TransferSource, rows: Iterable[Row], first_row: int, dedupe: bool, counts: Counter
                 ) -> Iterator[tuple[str, str, str | None]]:
    """(id, text, pair) of each non-empty row, stripped; ``first_row`` is the source row index of the first one.
    With ``dedupe`` the id ignores the source and position, so the same text in two corpora is labelled once."""
    for n, (text, pair) in enumerate(rows, start=first_row):
        counts["rows"] += 1
        text = text.strip()
        pair = pair.strip() if pair is not None else None
        if not text:
            counts["empty"] += 1
            continue
        content = text if pair is None else f"{text}\t{pair}"
        yield stable_id("text", content) if dedupe else stable_id(f"{source.key}:{n}", content), text, pair


def write_chunks(rows: Iterable[tuple], directory: Path, chunk_rows: int, columns: list[str],
                 types: dict[str, pa.DataType] | None = None) -> list[int]:
    """Write rows as ``chunk-000000.parquet``, ... of ``chunk_rows`` rows each (atomically, one in memory at a
    time); returns the row count of every chunk."""
    sizes: list[int] = []
    buffer: list[tuple] = []

    def flush() -> None:
        table = pa.table({c: pa.array([r[i] for r in buffer], type=(types or {}).get(c)) for i, c in enumerate(columns)})
        with atomic_path(directory / chunk_name(len(sizes))) as tmp:
            pq.write_table(table, tmp)
        sizes.append(len(buffer))
        buffer.clear()

    for row in rows:
        buffer.append(row)
        if len(buffer) == chunk_rows:
            flush()
    if buffer:
        flush()
    return sizes


def chunk_name(index: int) -> str:
    return f"chunk-{index:06d}.parquet"
