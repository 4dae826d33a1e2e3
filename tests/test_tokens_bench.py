"""`bench/tokens.py`'s labels-layout figures without Ray: bytes per stored token and, for a top-k layout, the
teacher's probability left off the stored labels, from Parquet written by the labeller's own column code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from xdray.distill.token_layout import Layout, token_columns

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import tokens  # noqa: E402


def write_labels(root: Path, layout: Layout, logits: list[np.ndarray], positions: list[list[int]]) -> Path:
    (root / "transfer").mkdir(parents=True)
    pq.write_table(pa.table(token_columns(logits, positions, layout)), root / "transfer" / "part-0.parquet")
    (root / "_manifest.json").write_text(json.dumps({"layout": layout.describe()}))
    return root


def test_layout_sizes_count_stored_tokens_and_what_top_k_leaves_out(tmp_path):
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(n, 21)).astype(np.float32) * 3 for n in (7, 4, 9)]
    positions = [[0, 2, 3], [1], [0, 1, 2, 5, 8]]  # 9 stored tokens
    full = tokens.label_sizes(write_labels(tmp_path / "full", Layout("tokens", num_labels=21), logits, positions),
                              "first_subword")
    top3 = tokens.label_sizes(write_labels(tmp_path / "top3", Layout("tokens", num_labels=21, top_k=3), logits,
                                           positions), "top3")
    assert full["stored_tokens"] == top3["stored_tokens"] == 9 and full["rows"] == 3
    assert full["layout"]["lossless"] and "rest_mass_mean" not in full
    assert not top3["layout"]["lossless"]
    kept = np.concatenate([x[p] for x, p in zip(logits, positions)])
    probs = torch.softmax(torch.from_numpy(kept), -1).numpy()
    rest = 1.0 - np.sort(probs, -1)[:, -3:].sum(-1)  # float16 storage: a few 1e-3 off
    assert top3["rest_mass_mean"] == pytest.approx(rest.mean(), abs=5e-3)
    assert top3["rest_mass_max"] == pytest.approx(rest.max(), abs=5e-3)
    # WNUT's 21 float16 logits + an int16 position per token, against 3 logits + 3 label ids + a log-sum-exp + the
    # position (and each column's int32 offset per row)
    assert full["arrow_bytes_per_token"] >= 21 * 2 + 2 > 3 * 2 + 3 * 2 + 2 + 2 + 4 * 4 * 3 / 9 >= top3[
        "arrow_bytes_per_token"] >= 3 * 2 + 3 * 2 + 2 + 2
    table = tokens.markdown([{"arm": "teacher", "metric": "f1", "mean": 0.5, "std": 0.0, "params": 1e6}], 1, 0.25,
                            [full, top3], True)
    assert "(b) − (a): no students run." in table and table.count("| first_subword | 9 |") == 1
