"""The labelling actors' work: the teacher's batch inference over chunks of the transfer corpus, one Parquet shard
per chunk."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from xdray.common.files import atomic_path
from xdray.common.hf import load_classifier
from xdray.common.memory import peak_rss_mb
from xdray.distill.token_layout import Layout, kept_positions, ragged, span_columns, token_columns, word_tags
from xdray.label.corpus import stable_id
from xdray.transfer.model import load_saved
from xdray.transfer.qa import qa_windows


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (a stable sort), so padding wastes little compute."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[lo:lo + batch_size] for lo in range(0, len(order), batch_size)]


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id rows to the longest one: (ids, attention mask)."""
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


class ChunkLabeler:
    """Teacher inference over one chunk of the cleaned corpus: tokenize, handle overlong rows, sort by length,
    forward in dynamically padded batches, and return the labelled Arrow table with its counts.

    A Ray Data actor (``__call__`` takes chunk file paths and writes each shard atomically) and, in-process,
    the same code the benchmark's bare loop measures against.
    """

    def __init__(self, teacher_dir: str, max_length: int, threads: int, batch_size: int,
                 hidden_layers: Sequence[int] = (), overlong: str = "truncate", logits_dtype: str = "float32",
                 precision: str = "auto", layout: dict | None = None):
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU when Ray gave one
        self.layout = Layout.read(layout)
        if self.layout.kind in ("tokens", "qa"):  # per-token heads; token rows are words (the text split on spaces)
            kind = "token_classification" if self.layout.kind == "tokens" else "question_answering"
            self.model, self.tokenizer = load_saved(teacher_dir, {"type": kind})
        else:
            self.model, self.tokenizer = load_classifier(teacher_dir)
        self.model.to(self.device).eval()
        self.bf16 = self.device.type == "cuda" if precision == "auto" else precision == "bf16"
        self.max_length, self.batch_size, self.hidden_layers = max_length, batch_size, list(hidden_layers)
        self.overlong, self.logits_type = overlong, pa.float16() if logits_dtype == "float16" else pa.float32()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = [self.label_file(Path(src), Path(dst)) for src, dst in zip(batch["source"], batch["dest"])]
        return {key: np.array([s[key] for s in stats]) for key in stats[0]}

    def label_file(self, src: Path, dst: Path) -> dict:
        """Label one chunk file into ``dst`` (written under a temporary name, then renamed: all or nothing)."""
        t0 = time.perf_counter()
        table, stats = self.label_table(pq.read_table(src))
        stats["seconds"] = time.perf_counter() - t0
        with atomic_path(dst) as tmp:
            pq.write_table(table.replace_schema_metadata({"xdray.stats": json.dumps(stats)}), tmp)
        stats["peak_rss_mb"] = peak_rss_mb()
        return stats

    def forward(self, ids: list[list[int]], types: list[list[int]] | None, rows: list[int]):
        """The teacher over ``rows`` of ``ids`` in batches of similar length: yields (positions in ``rows``, those
        rows' indices, the model output, the attention mask)."""
        for batch in length_batches([len(ids[i]) for i in rows], self.batch_size):
            picked = [rows[j] for j in batch]
            input_ids, mask = pad_batch([ids[i] for i in picked], self.tokenizer.pad_token_id)
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            if types is not None:
                inputs["token_type_ids"] = pad_batch([types[i] for i in picked], 0)[0]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.model(**{k: v.to(self.device) for k, v in inputs.items()},
                                 output_hidden_states=bool(self.hidden_layers))
            yield batch, picked, out, mask

    @torch.inference_mode()
    def label_table(self, table: pa.Table) -> tuple[pa.Table, dict]:
        if self.layout.kind == "qa":
            return self.label_windows(table)
        tokens = self.layout.kind == "tokens"
        if tokens:
            words = (table.column("tokens").to_pylist() if "tokens" in table.column_names
                     else [t.split() for t in table.column("text").to_pylist()])
            ids, word_ids, overlong = self.tokenize_words(words)
            types = None
        else:
            texts = table.column("text").to_pylist()
            pairs = table.column("text_pair").to_pylist() if "text_pair" in table.column_names else None
            ids, types, overlong = self.tokenize(texts, pairs)
        keep = [i for i in range(len(ids)) if not (self.overlong == "drop" and i in overlong)]
        n, hidden = len(keep), {k: None for k in self.hidden_layers}
        logits: np.ndarray | list | None = [None] * n if tokens else None
        counted = padded = 0
        for batch, rows, out, mask in self.forward(ids, types, keep):
            scores = out.logits.float().cpu().numpy()
            if tokens:
                for b, (j, i) in enumerate(zip(batch, rows)):
                    logits[j] = scores[b, :len(ids[i])]
            else:
                if logits is None:
                    logits = np.empty((n, scores.shape[1]), np.float32)
                logits[batch] = scores
            for k in self.hidden_layers:
                state = out.hidden_states[k][:, 0].half().cpu().numpy()
                if hidden[k] is None:
                    hidden[k] = np.empty((n, state.shape[1]), np.float16)
                hidden[k][batch] = state
            counted += int(mask.sum())
            padded += mask.numel()
        columns = {name: table.column(name).take(keep) for name in ("id", "label") if name in table.column_names}
        columns["input_ids"] = ragged([ids[i] for i in keep], pa.int32())
        if types is not None:
            columns["token_type_ids"] = ragged([types[i] for i in keep], pa.int8())
        if tokens:
            columns |= token_columns(logits, [kept_positions(word_ids[i], self.layout.positions) for i in keep],
                                     self.layout)
            if "tags" in table.column_names:  # dev: each word's tag on its first sub-word, -100 elsewhere
                tags = table.column("tags").to_pylist()
                columns["token_tags"] = ragged([word_tags(word_ids[i], tags[i]) for i in keep], pa.int16())
        else:
            columns["logits"] = _matrix(logits, self.logits_type)
        for k, states in hidden.items():
            columns[f"hidden_{k}"] = _matrix(states, pa.float16())
        stats = {"rows": table.num_rows, "labelled": n, "tokens": counted, "padded_tokens": padded,
                 "truncated": len(overlong) if self.overlong == "truncate" else 0,
                 "overlong_dropped": len(overlong) if self.overlong == "drop" else 0}
        return pa.table(columns), stats

    def label_windows(self, table: pa.Table) -> tuple[pa.Table, dict]:
        """QA: each (question, context) row becomes its windows (``transfer.qa.qa_windows``), one labelled row per
        window with the teacher's start and end logits over its tokens. Dev windows also carry their answer's
        token span (``start_positions``/``end_positions``) and their example (``example_id``, ``question``,
        ``context``, ``answers``), from which the dev score extracts and scores answers."""
        questions, contexts = table.column("text").to_pylist(), table.column("text_pair").to_pylist()
        dev = "answers" in table.column_names
        answers = None
        if dev:
            answers = [(starts[0], texts[0]) if texts else None for texts, starts in
                       zip(table.column("answers").to_pylist(), table.column("answer_starts").to_pylist())]
        windows = qa_windows(self.tokenizer, questions, contexts, self.max_length, self.layout.stride, answers)
        ids, types = windows.input_ids, windows.token_type_ids
        start, end = [None] * len(ids), [None] * len(ids)
        counted = padded = 0
        for _, rows, out, mask in self.forward(ids, types, list(range(len(ids)))):
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for b, i in enumerate(rows):
                start[i], end[i] = s[b, :len(ids[i])], e[b, :len(ids[i])]
            counted += int(mask.sum())
            padded += mask.numel()
        examples = table.column("id").to_pylist()
        nth, seen = [], Counter()  # each window's number within its example
        for ex in windows.example:
            nth.append(seen[ex])
            seen[ex] += 1
        columns = {"id": pa.array([stable_id("window", f"{examples[ex]}:{k}") for ex, k in zip(windows.example, nth)],
                                  pa.string()),
                   "input_ids": ragged(ids, pa.int32())}
        if types is not None:
            columns["token_type_ids"] = ragged(types, pa.int8())
        columns |= span_columns(start, end)
        if dev:
            of = pa.array(windows.example, pa.int64())
            columns |= {"start_positions": pa.array(windows.start_positions, pa.int16()),
                        "end_positions": pa.array(windows.end_positions, pa.int16()),
                        "example_id": table.column("id").take(of), "question": table.column("text").take(of),
                        "context": table.column("text_pair").take(of), "answers": table.column("answers").take(of)}
        stats = {"rows": table.num_rows, "labelled": len(ids), "tokens": counted, "padded_tokens": padded,
                 "truncated": 0, "overlong_dropped": 0}
        return pa.table(columns), stats

    def tokenize_words(self, words: list[list[str]]) -> tuple[list, list, set[int]]:
        """Sub-word ids and each token's word index, truncated to ``max_length`` (rows over it reported)."""
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length + 1)
        ids = enc["input_ids"]
        overlong = {i for i, row in enumerate(ids) if len(row) > self.max_length}
        if overlong:
            enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length)
            ids = enc["input_ids"]
        return ids, [enc.word_ids(i) for i in range(len(ids))], overlong

    def tokenize(self, texts: list[str], pairs: list[str] | None) -> tuple[list, list | None, set[int]]:
        """Token ids without padding; one token over the limit reveals the overlong rows, which are then
        tokenized again with truncation to ``max_length``."""
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length + 1)
        ids, types = enc["input_ids"], enc.get("token_type_ids") if pairs is not None else None
        overlong = {i for i, row in enumerate(ids) if len(row) > self.max_length}
        if overlong:
            rows = sorted(overlong)
            again = self.tokenizer([texts[i] for i in rows], [pairs[i] for i in rows] if pairs else None,
                                   truncation=True, max_length=self.max_length)
            for j, i in enumerate(rows):
                ids[i] = again["input_ids"][j]
                if types is not None:
                    types[i] = again["token_type_ids"][j]
        return ids, types, overlong


def _matrix(values: np.ndarray | None, kind: pa.DataType) -> pa.Array:
    """An (n, d) array as a list<kind> column (empty when the chunk kept no rows)."""
    values = np.zeros((0, 0)) if values is None else values
    n, d = values.shape
    flat = pa.array(values.reshape(-1).astype(kind.to_pandas_dtype()), type=kind)
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * d), flat)
