"""A token task's teacher (``data.task: token_classification``): `xdray teacher` fine-tunes tags per word on a
local Ray with DeepSpeed, selects on dev entity F1, scores test once and saves a standard HF token classifier;
`xdray label` stores its per-token top-k logits; `xdray distill` trains a token student on them that beats its
labels-only twin; labels of another layout, and the search, are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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


FEW_LABELS = 24
"""Train rows the students see (of 160): few labels and many unlabelled sentences, the regime distillation is for."""


def distil(job, root, arm: str, stages: list[dict], **more: str) -> dict:
    """``xdray distill`` of a token student in its own output directory, on the taught teacher (and its labels)."""
    cfg = load_config(job)
    sets = {"output_dir": str(root / arm), "label.teacher": str(cfg.teacher_dir), "data.max_train_rows": FEW_LABELS,
            "distill.labels": str(cfg.labels_dir), "distill.stages": stages, "distill.workers": 2,
            "distill.student": {"layers": 1, "hidden": 32, "heads": 2, "intermediate": 64, "init": "teacher-layers",
                                "embeddings": "copy"},
            "distill.lr": 3.0e-3, "distill.batch_size": 16, **more}
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={json.dumps(value)}")]
    assert main(["distill", str(job), *args]) == 0
    return json.loads((root / arm / "distill" / "summary.json").read_text())


@pytest.fixture(scope="module")
def distilled(labelled, tmp_path_factory):
    """A token student distilled from the stored top-2 logits (KL with the rest bucket, gradual unfreezing, then
    the few labels), and its twin trained on the few labels alone, for as many label epochs."""
    cfg, _ = labelled
    job, root = cfg.output_dir.parent / "job.yaml", tmp_path_factory.mktemp("token-students")
    labels = {"name": "labels", "data": "train", "loss": "ce", "epochs": 6}
    kd = distil(job, root, "kd", [{"name": "logits", "data": "transfer", "loss": "logits_kl", "epochs": 4,
                                   "unfreeze": "gradual"}, labels])
    return job, kd, distil(job, root, "labels-only", [labels])


@pytest.mark.slow
def test_a_token_student_distilled_from_per_token_logits_beats_its_labels_only_twin(distilled):
    job, kd, alone = distilled
    assert kd["metric"] == "f1" and "dev_accuracy" not in kd and kd["workers"] == 2
    assert kd["phases"][0].startswith("logits/") and kd["phases"][-1] == "labels"  # gradual, then the labels
    assert kd["dev_score"] > alone["dev_score"] + 0.05, (kd["dev_score"], alone["dev_score"])
    assert kd["test"]["f1"] > alone["test"]["f1"], (kd["test"], alone["test"])
    student = AutoModelForTokenClassification.from_pretrained(kd["model_dir"])  # a standard HF token classifier
    assert student.config.id2label == {0: "B-LOC", 1: "B-PER", 2: "I-PER", 3: "O"}
    assert student.config.num_hidden_layers == 1  # one of the teacher's two blocks
    enc = AutoTokenizer.from_pretrained(kd["model_dir"])(["i met anna smith in paris"], return_tensors="pt")
    assert student(**enc).logits.shape == (1, enc["input_ids"].shape[1], 4)
    store = tracking_uri(load_config(job, [f"output_dir={Path(kd['model_dir']).parents[1]}"]))
    run = MlflowClient(store).get_run(kd["mlflow_run_id"])
    assert run.data.metrics["test_f1"] == pytest.approx(kd["test"]["f1"]) and "final_dev_accuracy" not in run.data.metrics


@pytest.mark.slow
def test_labels_of_another_layout_and_the_search_are_refused_in_one_line(distilled, tmp_path, capsys):
    job, _, _ = distilled
    cfg = load_config(job)
    shutil.copytree(cfg.labels_dir, tmp_path / "labels")
    manifest = json.loads((tmp_path / "labels" / "_manifest.json").read_text())
    manifest["layout"] = {"kind": "sequence"}  # labels of a sequence teacher
    (tmp_path / "labels" / "_manifest.json").write_text(json.dumps(manifest))
    assert main(["distill", str(job), "--set", f"distill.labels={tmp_path / 'labels'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds sequence outputs, but the task is tokens; fix: label again" in err[0], err
    assert not (cfg.output_dir / "distill" / "student").exists()  # nothing half-made
    assert main(["pipeline", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "xdray search (and the pipeline, which ends with it) ranks students by accuracy" in err[0]
    assert "fix: run xdray teacher, xdray label and xdray distill" in err[0]


def test_a_token_task_of_sentence_pairs_is_refused(tmp_path):
    raw = token_config(tmp_path, tmp_path / "out")
    raw["data"]["pairs"] = True
    with pytest.raises(ConfigError, match=r"a token_classification task tags the words of one text; fix: remove"):
        validate_config(raw)
