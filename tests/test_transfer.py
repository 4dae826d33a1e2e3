"""Task transfer: readers and label mapping, metrics against hand-computed values, first-sub-word tagging and
fresh heads (no Ray), then `xdray transfer` end to end on a local Ray with real DeepSpeed engines and a real
MLflow store: classification with label names, sentence pairs, NER (BIO) and regression."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from xdray.config import TransferTask
from xdray.data.tables import write_atomic_tsv
from xdray.errors import XdrayError
from xdray.transfer.metrics import classification_metrics, entity_metrics, regression_metrics, task_metrics
from xdray.transfer.tasks import load_task

from .conftest import NEGATIVE, NOUNS, POSITIVE, _sentence, build_tiny_backbone

PEOPLE = [["anna", "smith"], ["bob"], ["carla", "jones"], ["dmitri"], ["eve", "brown"], ["farid"]]
PLACES = ["paris", "lima", "oslo", "cairo", "quito", "tokyo"]
FILLERS = ["i met", "yesterday we saw", "they said", "she called"]


def ner_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    person, place = rng.choice(PEOPLE), rng.choice(PLACES)
    filler = rng.choice(FILLERS).split()
    words = filler + person + ["in", place] + rng.choice([[], ["today"], ["last", "week"]])
    tags = ["O"] * len(words)
    tags[len(filler):len(filler) + len(person)] = ["B-PER"] + ["I-PER"] * (len(person) - 1)
    tags[len(filler) + len(person) + 1] = "B-LOC"
    return words, tags


def write_tasks(root: Path, n: dict[str, int] | None = None) -> dict[str, dict]:
    """Four learnable synthetic tasks, each in another file format, with label names (not ids)."""
    n = n or {"train": 200, "dev": 48, "test": 48}
    rng = random.Random(5)
    tasks = {}
    for role, rows in n.items():
        sentiment = [(_sentence(rng, i % 2 == 0), i % 2 == 0) for i in range(rows)]
        write_atomic_tsv(root / f"cls_{role}.tsv", ["text", "label"],
                         [{"text": t, "label": "positive" if y else "negative"} for t, y in sentiment])
        pairs = []
        for i in range(rows):
            good = i % 2 == 0
            pairs.append({"question": f"what about the {rng.choice(NOUNS)}",
                          "answer": f"it was {rng.choice(POSITIVE if good else NEGATIVE)}",
                          "label": "yes" if good else "no"})
        pq.write_table(pa.Table.from_pylist(pairs), root / f"pair_{role}.parquet")
        with open(root / f"reg_{role}.jsonl", "w") as f:
            for i in range(rows):
                good = i % 2 == 0
                score = (2.0 if good else -2.0) + rng.uniform(-0.5, 0.5)
                f.write(json.dumps({"text": _sentence(rng, good), "label": round(score, 3)}) + "\n")
        with open(root / f"ner_{role}.conll", "w") as f:
            f.write("-DOCSTART- O\n\n")
            for _ in range(rows):
                words, tags = ner_sentence(rng)
                f.write("".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\n")
    for name, kind, suffix in (("cls", "classification", "tsv"), ("pair", "pair_classification", "parquet"),
                               ("reg", "regression", "jsonl"), ("ner", "token_classification", "conll")):
        tasks[name] = {"name": name, "type": kind, **{r: str(root / f"{name}_{r}.{suffix}") for r in n}}
    tasks["pair"] |= {"text_column": "question", "pair_column": "answer"}
    return tasks


def corpus() -> list[str]:
    rng = random.Random(1)
    lines = [_sentence(rng, rng.random() < 0.5) for _ in range(300)]
    lines += [" ".join(ner_sentence(rng)[0]) for _ in range(200)]
    lines += [f"what about the {n} it was {a}" for n in NOUNS for a in POSITIVE + NEGATIVE]
    return lines


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, dict]:
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("encoder"), corpus())


# ---------------------------------------------------------------------------------------------------------
# Reading and label mapping (no Ray)


def test_every_format_reads_into_canonical_rows_with_names_mapped(tasks):
    cls = load_task(TransferTask(**tasks["cls"]))
    assert cls.names == ["negative", "positive"] and len(cls.train) == 200
    assert {r["label"] for r in cls.train} == {0, 1} and set(cls.train[0]) == {"text", "label"}
    pair = load_task(TransferTask(**tasks["pair"]))
    assert pair.names == ["no", "yes"] and pair.pairs and pair.train[0]["text_pair"].startswith("it was")
    reg = load_task(TransferTask(**tasks["reg"]))
    assert reg.names is None and reg.num_labels == 1 and isinstance(reg.train[0]["label"], float)
    ner = load_task(TransferTask(**tasks["ner"]))
    assert ner.names == ["B-LOC", "B-PER", "I-PER", "O"] and len(ner.train) == 200  # -DOCSTART- skipped
    row = ner.train[0]
    assert len(row["tokens"]) == len(row["tags"]) and ner.names[row["tags"][row["tokens"].index("in")]] == "O"
    limited = load_task(TransferTask(**tasks["cls"], max_train_rows=50), seed=3)
    assert len(limited.train) == 50 and limited.train == load_task(TransferTask(**tasks["cls"], max_train_rows=50), 3).train


def test_saved_datasets_with_class_labels_keep_their_names(tmp_path):
    import datasets

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-X", "I-X"]))})
    split = datasets.Dataset.from_dict({"tokens": [["a", "b"], ["c"]], "tags": [[1, 2], [0]]}, features=features)
    datasets.DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(str(tmp_path / "ds"))
    path = str(tmp_path / "ds")
    data = load_task(TransferTask(name="x", type="token_classification", train=path, dev=path, test=path))
    assert data.names == ["O", "B-X", "I-X"] and data.train[0] == {"tokens": ["a", "b"], "tags": [1, 2]}


@pytest.mark.parametrize("bad_row, expected", [
    ({"text": "x", "label": "neutral"}, r"dev\.tsv:\d+: label 'neutral' is not one of task 'cls''s classes "
                                        r"\[negative, positive\]; fix:"),
    ({"text": "x", "label": "0.5"}, r"label '0\.5' is a fractional number, but task 'cls' is classification; "
                                    r"fix: use type: regression"),
])
def test_bad_labels_are_refused_in_one_line(tasks, tmp_path, bad_row, expected):
    spec = dict(tasks["cls"])
    rows = [{"text": "fine", "label": "positive"}, bad_row]
    write_atomic_tsv(tmp_path / "dev.tsv", ["text", "label"], rows)
    spec["dev"] = str(tmp_path / "dev.tsv")
    with pytest.raises(XdrayError, match=expected) as err:
        load_task(TransferTask(**spec))
    assert "\n" not in str(err.value)


def test_float_labels_in_train_and_non_numbers_for_regression_are_refused(tasks, tmp_path):
    write_atomic_tsv(tmp_path / "train.tsv", ["text", "label"], [{"text": "a", "label": "1.5"}])
    spec = dict(tasks["cls"], train=str(tmp_path / "train.tsv"))
    with pytest.raises(XdrayError, match=r"train\.tsv:2: label '1\.5' is a fractional number"):
        load_task(TransferTask(**spec))
    write_atomic_tsv(tmp_path / "test.tsv", ["text", "label"], [{"text": "a", "label": "great"}])
    spec = dict(tasks["reg"], test=str(tmp_path / "test.tsv"))
    with pytest.raises(XdrayError, match=r"label 'great' is not a number, but task 'reg' is a regression"):
        load_task(TransferTask(**spec))
    (tmp_path / "bad.conll").write_text("a O\nb\tB-PER\n\nc B-LOC\n")
    ner = load_task(TransferTask(name="n", type="token_classification", train=tmp_path / "bad.conll",
                                 dev=tmp_path / "bad.conll", test=tmp_path / "bad.conll"))
    assert ner.train[0]["tokens"] == ["a", "b"]
    with pytest.raises(XdrayError, match=r"3 words but 2 tags; fix: give one tag per word"):
        (tmp_path / "t.jsonl").write_text(json.dumps({"tokens": "a b c", "tags": ["O", "O"]}) + "\n")
        load_task(TransferTask(name="n", type="token_classification", train=tmp_path / "t.jsonl",
                               dev=tmp_path / "t.jsonl", test=tmp_path / "t.jsonl"))


def test_task_config_errors():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="preset 'glue/imdb' is not known"):
        TransferTask(name="x", preset="glue/imdb")
    with pytest.raises(ValidationError, match="dev, test missing"):
        TransferTask(name="x", type="classification", train="a.tsv")
    with pytest.raises(ValidationError, match="type missing"):
        TransferTask(name="x", train="a", dev="b", test="c")


def test_a_glue_preset_offline_fails_in_one_line():
    with pytest.raises(XdrayError, match=r"preset glue/sst2 could not be loaded .*; fix: it needs network access"):
        load_task(TransferTask(name="sst2", preset="glue/sst2"))


def test_a_transfer_only_config_runs_transfer_and_refuses_other_steps(tasks, encoder, tmp_path):
    from xdray.checks import check_inputs, pipeline_steps
    from xdray.config import ConfigError, validate_config

    raw = transfer_config(tasks, encoder, tmp_path / "out")
    cfg = validate_config(raw)
    check_inputs(cfg, ("transfer",))
    assert pipeline_steps(cfg) == ("transfer",)
    with pytest.raises(ConfigError, match=r"^data: required for xdray distill; fix: add the data section"):
        check_inputs(cfg, ("distill",))
    del raw["transfer"]["student"]  # the default: this output directory's distilled student, not there yet
    with pytest.raises(ConfigError, match=r"^transfer.student: not found: .*distill/student; fix: run `xdray distill`"):
        check_inputs(validate_config(raw), ("transfer",))
    with pytest.raises(ConfigError, match=r"^data: required key is missing; fix: .*or a transfer section"):
        validate_config({"output_dir": str(tmp_path)})


# ---------------------------------------------------------------------------------------------------------
# Metrics against hand-computed values


def test_classification_metrics_by_hand():
    m = classification_metrics(np.array([0, 1, 1, 2, 0, 2]), np.array([0, 1, 2, 2, 1, 2]), 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class F1: class 0 p=1/2 r=1 → 2/3; class 1 p=1/2 r=1/2 → 1/2; class 2 p=1 r=2/3 → 4/5
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3) and m["score"] == m["accuracy"]


def test_regression_metrics_by_hand():
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 5.0]))
    # pearson: x̄=2.5, ȳ=2.75; cov = (-1.5)(-1.75)+(-0.5)(0.25)+(0.5)(-0.75)+(1.5)(2.25) = 5.5
    # sx² = 5, sy² = 3.0625+0.0625+0.5625+5.0625 = 8.75 → r = 5.5 / sqrt(43.75)
    assert m["pearson"] == pytest.approx(5.5 / np.sqrt(43.75))
    assert m["spearman"] == pytest.approx(0.8)  # ranks 1234 vs 1324: 1 - 6·2/(4·15)
    assert m["mse"] == pytest.approx((0 + 1 + 1 + 1) / 4)
    assert regression_metrics(np.ones(3), np.array([1.0, 2.0, 3.0]))["pearson"] == 0.0  # constant: undefined → 0


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "B-PER"]]
    # gold entities: PER(0-1), LOC(3), LOC(0); predicted: PER(0) (wrong span), LOC(3), LOC(0), PER(1)
    m = entity_metrics(gold, pred)
    assert m["precision"] == pytest.approx(2 / 4) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3)) and m["score"] == m["f1"]


def test_token_metric_skips_ignored_positions():
    task = {"type": "token_classification", "names": ["O", "B-X"], "num_labels": 2}
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 5.0]]])  # predicts B-X, O, B-X
    labels = torch.tensor([[1, 0, -100]])  # the last position is a later sub-word: not scored
    assert task_metrics(task, [logits], [labels])["f1"] == 1.0


# ---------------------------------------------------------------------------------------------------------
# Batches and heads


def test_tags_go_on_the_first_sub_word_only(encoder):
    from transformers import AutoTokenizer

    from xdray.transfer.model import token_collate

    tokenizer = AutoTokenizer.from_pretrained(encoder)
    split = next(w for w in ("parisoslo", "tokyolima", "smithjones", "annacairo")  # unseen: several pieces
                 if len(tokenizer.tokenize(w)) > 1 and tokenizer.unk_token not in tokenizer.tokenize(w))
    words = [split, "paris"]
    pieces = tokenizer(words, is_split_into_words=True)
    assert len(pieces["input_ids"]) > 4
    batch = token_collate({"tokens": np.array([np.array(words)], dtype=object), "tags": [np.array([1, 2])]},
                          tokenizer, 32, "cpu")
    labels, word_ids = batch["labels"][0].tolist(), pieces.word_ids()
    assert labels[0] == -100 and labels[len(word_ids) - 1] == -100  # [CLS], [SEP]
    firsts = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
    assert [labels[i] for i in firsts] == [1, 2]
    assert all(labels[i] == -100 for i in range(len(word_ids)) if i not in firsts)


def test_a_fresh_head_on_the_students_encoder(encoder, tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    from xdray.transfer.model import load_task_model

    source = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=2)
    torch.nn.init.constant_(source.classifier.weight, 0.5)
    source.save_pretrained(tmp_path / "student", safe_serialization=True)
    task = {"type": "classification", "names": ["a", "b"], "num_labels": 2}
    model, _ = load_task_model(str(tmp_path / "student"), task)
    assert not torch.equal(model.classifier.weight, source.classifier.weight)  # the source task's head is not kept
    for (name, p), q in zip(model.bert.named_parameters(), source.bert.parameters()):
        assert torch.equal(p, q), name
    ner, _ = load_task_model(str(encoder), {"type": "token_classification", "names": ["O", "B"], "num_labels": 2})
    bare = AutoModel.from_pretrained(encoder)
    assert torch.equal(ner.bert.embeddings.word_embeddings.weight, bare.embeddings.word_embeddings.weight)
    assert ner.config.id2label == {0: "O", 1: "B"}
    reg, _ = load_task_model(str(encoder), {"type": "regression", "names": None, "num_labels": 1})
    assert reg.config.problem_type == "regression" and reg.classifier.out_features == 1


# ---------------------------------------------------------------------------------------------------------
# `xdray transfer` end to end: Ray Train workers, DeepSpeed engines, MLflow


def transfer_config(tasks: dict, encoder: Path, out: Path) -> dict:
    """A transfer-only job: no source task or teacher, any HF encoder as the student; two tasks score one more
    test split each (by name, as a language would be)."""
    extra = {n: {"tests": {"again": tasks[n]["test"]}} for n in ("cls", "ner")}
    return {
        "output_dir": str(out), "mlflow": {"experiment": "xdray-transfer-test"},
        "transfer": {"student": str(encoder), "tasks": [t | {"max_length": 24} | extra.get(n, {})
                                                         for n, t in tasks.items()],
                     "epochs": 4, "patience": 2, "lr": 3.0e-3, "batch_size": 16, "workers": 2,
                     "latency_sentences": 8, "deepspeed": {"zero_stage": 2}},
    }


@pytest.fixture(scope="module")
def transferred(ray_local, tasks, encoder, tmp_path_factory):
    from xdray.cli import main

    out = tmp_path_factory.mktemp("transfer") / "out"
    job = out.parent / "job.yaml"
    job.write_text(yaml.safe_dump(transfer_config(tasks, encoder, out)))
    assert main(["transfer", str(job)]) == 0
    return job, out, json.loads((out / "transfer" / "summary.json").read_text())


@pytest.mark.slow
def test_every_task_type_learns_and_reports_its_metric(transferred):
    _, out, summary = transferred
    results = summary["tasks"]
    assert {n: r["metric"] for n, r in results.items()} == {"cls": "accuracy", "pair": "accuracy", "reg": "pearson",
                                                             "ner": "f1"}
    assert results["cls"]["test"]["accuracy"] > 0.8, results["cls"]["test"]
    assert results["pair"]["test"]["accuracy"] > 0.8, results["pair"]["test"]  # only the second sentence decides
    assert results["reg"]["test"]["pearson"] > 0.6 and "spearman" in results["reg"]["test"], results["reg"]["test"]
    assert results["ner"]["test"]["f1"] > 0.5 and "precision" in results["ner"]["test"], results["ner"]["test"]
    for name, r in results.items():
        assert r["workers"] == 2 and r["latency_ms"] > 0 and r["params"]["total"] > 0
        # model selection read dev only: the kept epoch is the best dev score seen, never a test figure
        best = max([e["dev_score"] for e in r["history"]] + [r["history"][-1]["dev_score"]])
        assert r["dev_score"] == pytest.approx(best, abs=1e-6) or r["history"][-1]["best_epoch"] == -1, name
    assert results["cls"]["labels"] == ["negative", "positive"]


@pytest.mark.slow
def test_exports_load_as_standard_hf_models_with_label_names(transferred):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    _, out, _ = transferred
    ner = AutoModelForTokenClassification.from_pretrained(out / "transfer" / "ner" / "model")
    assert ner.config.id2label == {0: "B-LOC", 1: "B-PER", 2: "I-PER", 3: "O"}
    reg = AutoModelForSequenceClassification.from_pretrained(out / "transfer" / "reg" / "model")
    assert reg.config.num_labels == 1 and reg.config.problem_type == "regression"
    assert (out / "transfer" / "cls" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_mlflow_has_a_transfer_run_with_a_child_per_task(transferred):
    from mlflow.tracking import MlflowClient

    _, out, summary = transferred
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xdray-transfer-test")
    runs = client.search_runs([exp.experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["mlflow_run_id"]}
    assert set(children) == {f"transfer/{n}" for n in ("cls", "pair", "reg", "ner")}
    assert children["transfer/ner"].data.metrics["test_f1"] == pytest.approx(summary["tasks"]["ner"]["test"]["f1"])
    assert "dev/ner/score" in children["transfer/ner"].data.metrics
    # the extra test split: the same rows, the same scores, under its own name
    for name, metric in (("cls", "accuracy"), ("ner", "f1")):
        result = summary["tasks"][name]
        assert result["test_by_language"]["again"] == result["test"]
        assert children[f"transfer/{name}"].data.metrics[f"test_{metric}.again"] == pytest.approx(
            result["test"][metric])
    parent = client.get_run(summary["mlflow_run_id"]).data.metrics
    assert parent["cls/test_accuracy.again"] == pytest.approx(summary["tasks"]["cls"]["test"]["score"])
    assert summary["tasks"]["pair"]["test_by_language"] == {}


@pytest.mark.slow
def test_a_rerun_skips_finished_tasks_and_bad_labels_stop_before_training(transferred, tmp_path, capsys):
    from xdray.cli import main

    job, out, summary = transferred
    model = out / "transfer" / "cls" / "model" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    assert main(["transfer", str(job)]) == 0
    assert model.stat().st_mtime_ns == stamp
    assert "cls: complete, skipping" in capsys.readouterr().out
    cfg = yaml.safe_load(job.read_text())
    bad = tmp_path / "dev.tsv"
    write_atomic_tsv(bad, ["text", "label"], [{"text": "so so", "label": "neutral"}])
    cfg["transfer"]["tasks"][0]["dev"] = str(bad)
    cfg["output_dir"] = str(tmp_path / "out")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["transfer", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label 'neutral' is not one of task 'cls''s classes" in err[0]
    assert not (tmp_path / "out" / "transfer").exists()


@pytest.mark.slow
def test_transfer_models_export_and_the_registered_ner_model_tags_words(transferred, monkeypatch):
    """`xdray export` of real fine-tuned models: a token classifier (logits per token) and a pair model (segment
    ids), each within 1e-4 of torch on its own task's splits; the NER export registered and served by alias."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from xdray.cli import main

    job, out, summary = transferred
    assert main(["export", str(job), "--set", "export.model=transfer/pair", "--set", "export.latency.sentences=4"]) == 0
    pair = json.loads((out / "export" / "summary.json").read_text())
    assert pair["data"] == "pair" and pair["task"] == "pair_classification" and pair["onnx_max_abs_diff"] <= 1e-4
    assert pair["metrics"]["onnx_fp32"]["test"]["accuracy"] == summary["tasks"]["pair"]["test"]["accuracy"]
    assert pair["speedup_vs_teacher"] is None and "teacher" not in pair["latency_ms"]  # no teacher in this config
    exported = json.loads((out / "export" / "model" / "export.json").read_text())
    assert exported["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]

    assert main(["export", str(job), "--set", "export.model=transfer/ner", "--set", "export.latency.sentences=4",
                 "--set", "mlflow.register=xdray-ner"]) == 0
    ner = json.loads((out / "export" / "summary.json").read_text())
    assert ner["task"] == "token_classification" and ner["onnx_max_abs_diff"] <= 1e-4
    assert ner["metrics"]["onnx_fp32"]["test"]["f1"] == pytest.approx(summary["tasks"]["ner"]["test"]["f1"], abs=1e-4)
    assert ner["registered"] == "models:/xdray-ner@champion"
    # how a user points MLflow's loader at the store (models:/ URIs resolve against it); a real registry, no mock
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/xdray-ner@champion")
    words = "yesterday we saw anna smith in paris today"
    tags = served.predict(pd.DataFrame({"text": [words]}))["tags"][0].split()
    assert len(tags) == len(words.split()) and set(tags) <= {"B-LOC", "B-PER", "I-PER", "O"}
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    for task, result in summary["tasks"].items():  # each transfer task's model is an MLflow model too
        assert {a.path for a in client.list_artifacts(result["mlflow_run_id"])} >= {"model", "result.json"}, task
    assert result["mlflow_model_uri"] == f"runs:/{result['mlflow_run_id']}/model"
