"""Sentence-pair inputs (text, text_pair) through teacher → label → distill, on a task where only the second
sentence carries the label."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest
import yaml

from xdray.cli import main
from xdray.data.tables import LabeledSplit, write_labeled

from .conftest import NEGATIVE, NOUNS, POSITIVE, build_tiny_backbone, tiny_config

pytestmark = pytest.mark.slow


def _pair(rng: random.Random, positive: bool) -> tuple[str, str]:
    question = f"what did you think of the {rng.choice(NOUNS)}"
    answer = rng.choice(["it was {a}", "honestly {a}", "{a} i would say"]).format(
        a=rng.choice(POSITIVE if positive else NEGATIVE))
    return question, answer


def test_sentence_pairs_flow_through_every_step(ray_local, tmp_path):
    rng = random.Random(3)
    for name, n in (("train", 240), ("dev", 60), ("test", 60)):
        labels = [i % 2 for i in range(n)]
        pairs = [_pair(rng, bool(y)) for y in labels]
        write_labeled(tmp_path / f"{name}.tsv", LabeledSplit([a for a, _ in pairs], labels, [b for _, b in pairs]))
    transfer = ["\t".join(_pair(rng, rng.random() < 0.5)) for _ in range(300)]
    (tmp_path / "transfer.txt").write_text("\n".join(transfer) + "\n")
    backbone = build_tiny_backbone(tmp_path / "backbone", [line.replace("\t", " ") for line in transfer])
    task = {"train": tmp_path / "train.tsv", "dev": tmp_path / "dev.tsv", "test": tmp_path / "test.tsv",
            "transfer": tmp_path / "transfer.txt", "backbone": backbone}
    cfg = tiny_config(task, tmp_path / "out")
    cfg["data"] |= {"pairs": True, "max_length": 24}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(cfg))

    for step in ("teacher", "label", "distill"):
        assert main([step, str(job)]) == 0, step
    out = tmp_path / "out"
    labelled = pq.read_table(out / "label" / "data" / "transfer")
    assert labelled.num_rows == len(set(transfer))
    # the second sentence is segment 1 in what the student is trained on
    assert all(1 in row and row[0] == 0 for row in labelled.column("token_type_ids").to_pylist())
    for step in ("teacher", "distill"):
        summary = json.loads((out / step / "summary.json").read_text())
        assert summary["test_accuracy"] > 0.7, (step, summary["test_accuracy"])  # the answer alone decides
