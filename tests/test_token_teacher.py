"""A token task's teacher (``data.task: token_classification``): `xdray teacher` fine-tunes tags per word on a
local Ray with DeepSpeed, selects on dev entity F1, scores test once and saves a standard HF token classifier;
`xdray label` stores its per-token top-k logits; the steps that do not distil token tasks yet
say so in one line."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from transformers import AutoModelForTokenClassification, AutoTokenizer

from xdray.cli import main
from xdray.common.tracking import tracking_uri
from xdray.config import ConfigError, load_config, validate_config
from xdray.distill.token_layout import Layout, bytes_per_token, token_targets

from .conftest import build_tiny_backbone
from .test_transfer import corpus, write_tasks


def token_config(tmp_path, out) -> dict:
    tasks = write_tasks(tmp_path, {"train": 160, "dev": 40, "test": 40})["ner"]
    (tmp_path / "transfer.txt").write_text("\n".join(corpus()) + "\n")
    return {
        "output_dir": str(out), "mlflow": {"experiment": "xdray-token-teacher"},
        "data": {"task": "token_classification", "train": tasks["train"], "dev": tasks["dev"], "test": tasks["test"],
                 "tests": {"again": tasks["test"]}, "transfer": [str(tmp_path / "transfer.txt")], "max_length": 24},
        "teacher": {"backbone": str(build_tiny_backbone(tmp_path / "backbone", corpus())), "epochs": 4,
                    "lr": 3.0e-3, "batch_size": 16, "workers": 2, "deepspeed": {"zero_stage": 2}},
    }


@pytest.fixture(scope="module")
def taught(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("token-teacher")
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(token_config(root, root / "out")))
    assert main(["teacher", str(job)]) == 0
    return job, json.loads((root / "out" / "teacher" / "summary.json").read_text())


@pytest.mark.slow
def test_the_teacher_learns_the_tags_and_scores_test_once(taught):
    job, summary = taught
    assert summary["type"] == "token_classification" and summary["metric"] == "f1"
    assert summary["test"]["f1"] > 0.5 and "precision" in summary["test"], summary["test"]
    assert summary["test_by_language"]["again"]["f1"] == pytest.approx(summary["test"]["f1"])  # the same split
    assert summary["workers"] == 2 and summary["labels"] == ["B-LOC", "B-PER", "I-PER", "O"]
    best = max(e["dev_score"] for e in summary["history"])
    assert summary["dev_score"] == pytest.approx(best, abs=1e-6)  # selected on dev
    cfg = load_config(job)
    model = AutoModelForTokenClassification.from_pretrained(cfg.teacher_dir)
    assert model.config.id2label == {0: "B-LOC", 1: "B-PER", 2: "I-PER", 3: "O"}
    enc = AutoTokenizer.from_pretrained(cfg.teacher_dir)(["i met anna smith in paris"], return_tensors="pt")
    tags = [model.config.id2label[i] for i in model(**enc).logits.argmax(-1)[0, 1:-1].tolist()]
    assert "B-PER" in tags and "B-LOC" in tags, tags
    client = MlflowClient(tracking_uri(cfg))
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.run_name == "teacher" and run.data.metrics["test_f1"] == pytest.approx(summary["test"]["f1"])


@pytest.fixture(scope="module")
def labelled(taught):
    """Top-2 of the 4 tags (the lossless layout's round trip through the labeler is tests/test_token_layout.py's)."""
    job, _ = taught
    assert main(["label", str(job), "--set", "label.token_top_k=2"]) == 0
    cfg = load_config(job, ["label.token_top_k=2"])
    return cfg, (json.loads((cfg.labels_dir / "_manifest.json").read_text()),
                 pq.read_table(cfg.labels_dir / "transfer"), pq.read_table(cfg.labels_dir / "dev"))


@pytest.mark.slow
def test_label_stores_the_teachers_top_logits_on_first_sub_words(labelled):
    cfg, (manifest, transfer, dev) = labelled
    assert manifest["layout"] == {"kind": "tokens", "positions": "first_subword", "top_k": 2, "num_labels": 4,
                                  "lossless": False}
    assert {"token_positions", "token_logits", "token_labels", "token_lse"} <= set(transfer.column_names)
    assert "logits" not in transfer.column_names
    assert dev.num_rows == 40 and "token_tags" in dev.column_names
    tokenizer = AutoTokenizer.from_pretrained(cfg.teacher_dir)
    model = AutoModelForTokenClassification.from_pretrained(cfg.teacher_dir).eval()
    layout = Layout.read(manifest["layout"])
    columns = ("token_positions", "token_logits", "token_labels", "token_lse")
    for i in range(3):
        ids = transfer.column("input_ids")[i].as_py()
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids])).logits[0]
        positions = transfer.column("token_positions")[i].as_py()
        words = tokenizer.convert_ids_to_tokens(ids)
        assert all(not words[p].startswith("##") for p in positions) and len(positions) == len(
            [w for w in words[1:-1] if not w.startswith("##")])
        got = token_targets({k: [transfer.column(k)[i].as_py()] for k in columns}, len(ids), layout)
        keep = got["teacher_token_mask"][0, positions]
        assert (keep.sum(-1) == 2).all()
        mine = expected[positions]  # the stored are the two largest (up to batching's rounding)
        assert (mine.masked_fill(~keep, float("inf")).amin(-1) >= mine.masked_fill(keep, -float("inf")).amax(-1)
                - 1e-4).all()
        torch.testing.assert_close(got["teacher_token_logits"][0, positions][keep], expected[positions][keep],
                                   atol=5e-3, rtol=1e-3)
    # per token: 2 float16 logits, 2 int16 tags, a float16 log-sum-exp, an int16 position, plus each row's int32
    # offsets of the 4 columns (a tweet has at least one token); the full layout would hold 4 logits + a position
    assert 12 <= bytes_per_token(transfer, layout) <= 12 + 4 * 4


@pytest.mark.slow
def test_steps_that_cannot_distil_token_tasks_yet_refuse_in_one_line(taught, capsys):
    job, _ = taught
    assert main(["pipeline", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "per-token distillation is in progress, so xdray distill and xdray search cannot" in err[0], err
    assert "fix: run xdray teacher and xdray label alone" in err[0]


def test_a_token_task_of_sentence_pairs_is_refused(tmp_path):
    raw = token_config(tmp_path, tmp_path / "out")
    raw["data"]["pairs"] = True
    with pytest.raises(ConfigError, match=r"a token_classification task tags the words of one text; fix: remove"):
        validate_config(raw)
