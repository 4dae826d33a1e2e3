"""A token task's teacher (``data.task: token_classification``): `xdray teacher` fine-tunes tags per word on a
local Ray with DeepSpeed, selects on dev entity F1, scores test once and saves a standard HF token classifier;
the steps that do not distil token tasks yet say so in one line."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient
from transformers import AutoModelForTokenClassification, AutoTokenizer

from xdray.cli import main
from xdray.common.tracking import tracking_uri
from xdray.config import ConfigError, load_config, validate_config

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


@pytest.mark.slow
def test_steps_that_cannot_distil_token_tasks_yet_refuse_in_one_line(taught, capsys):
    job, _ = taught
    assert main(["pipeline", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.task token_classification: label, distill" in err[0], err
    assert "fix: run xdray teacher alone" in err[0]


def test_a_token_task_of_sentence_pairs_is_refused(tmp_path):
    raw = token_config(tmp_path, tmp_path / "out")
    raw["data"]["pairs"] = True
    with pytest.raises(ConfigError, match=r"a token_classification task tags the words of one text; fix: remove"):
        validate_config(raw)
