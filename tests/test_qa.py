"""Extractive QA against hand-computed values: windows over a long context and the answer's token span in each,
answers extracted across windows (length limit, order, the null answer), exact match / F1; QA rows read from
files (bad offsets refused in one line), batched into windows and trained with the span loss; a QA teacher
(``data.task: question_answering``) and a ``question_answering`` transfer task end to end on a local Ray with
DeepSpeed; the labeler's span logits per window, the dev score from labelled windows and the span KD loss;
a QA student distilled end to end; and the search refused for QA sources in one line."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from xdray.config import ConfigError, TransferTask, load_config, validate_config
from xdray.errors import XdrayError
from xdray.transfer.qa import extract_answers, qa_windows, squad_metrics
from xdray.transfer.tasks import load_task

from .conftest import build_tiny_backbone

FILLER = "the film had a long plot and the cast was there for the story"
CONTEXT = f"{FILLER} . {FILLER} . the ending was written by anna maria lopez in paris . {FILLER} . {FILLER} ."
QUESTION = "who wrote the ending"
ANSWER = "anna maria lopez"
ANSWER_START = CONTEXT.index(ANSWER)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    words = sorted(set(CONTEXT.split() + QUESTION.split()))
    return AutoTokenizer.from_pretrained(build_tiny_backbone(tmp_path_factory.mktemp("qa"), [CONTEXT, QUESTION] + words))


def windows_of(tokenizer, answers=((ANSWER_START, ANSWER),)):
    return qa_windows(tokenizer, [QUESTION], [CONTEXT], max_length=32, stride=8, answers=list(answers))


def test_long_contexts_become_overlapping_windows_with_the_answer_span_in_each(tokenizer):
    w = windows_of(tokenizer)
    assert len(w.input_ids) >= 3 and set(w.example) == {0} and all(len(ids) <= 32 for ids in w.input_ids)
    holding = [i for i, s in enumerate(w.start_positions) if s]
    assert holding and len(holding) < len(w.input_ids)  # some windows lack the answer: they point at [CLS]
    for i in holding:
        s, e = w.start_positions[i], w.end_positions[i]
        assert CONTEXT[w.offsets[i][s][0]:w.offsets[i][e][1]] == ANSWER
    for i in set(range(len(w.input_ids))) - set(holding):
        assert (w.start_positions[i], w.end_positions[i]) == (0, 0)
    spans = [[o for o in offsets if o] for offsets in w.offsets]  # consecutive windows share context tokens
    assert all(a[-1][1] > b[0][0] for a, b in zip(spans, spans[1:]))
    none = qa_windows(tokenizer, [QUESTION], [CONTEXT], 32, 8, answers=[None])  # unanswerable: [CLS] everywhere
    assert set(none.start_positions) == {0} and set(none.end_positions) == {0}


def logits_for(w, spans: dict[int, list[tuple[int, int, float]]]):
    """Start/end logits of -1 everywhere but the given (window, start, end, value) spans."""
    starts = [np.full(len(ids), -1.0, np.float32) for ids in w.input_ids]
    ends = [x.copy() for x in starts]
    for window, marks in spans.items():
        for s, e, value in marks:
            starts[window][s] = max(starts[window][s], value)
            ends[window][e] = max(ends[window][e], value)
    return starts, ends


def test_the_best_span_over_all_windows_wins_within_the_length_limit(tokenizer):
    w = windows_of(tokenizer)
    right = next(i for i, s in enumerate(w.start_positions) if s)
    other = next(i for i, s in enumerate(w.start_positions) if not s)
    first_context = next(j for j, o in enumerate(w.offsets[other]) if o)
    s, e = w.start_positions[right], w.end_positions[right]
    starts, ends = logits_for(w, {right: [(s, e, 5.0)], other: [(first_context, first_context + 1, 4.0)]})
    assert extract_answers(w, starts, ends, [CONTEXT]) == [ANSWER]
    assert extract_answers(w, starts, ends, [CONTEXT], max_answer_tokens=e - s) != [ANSWER]  # too long now
    # an end before its start is never a span: the best start with the best end behind it
    starts, ends = logits_for(w, {right: [(e, e, 9.0), (s, s, 1.0)]})
    ends[right][s] = 9.0
    last = w.offsets[right][e]  # (start e, end s) scores 18 but runs backwards; (e, e) scores 18 and is a span
    assert extract_answers(w, starts, ends, [CONTEXT]) == [CONTEXT[last[0]:last[1]]]


def test_the_null_answer_wins_only_when_allowed_and_better(tokenizer):
    w = windows_of(tokenizer)
    right = next(i for i, s in enumerate(w.start_positions) if s)
    starts, ends = logits_for(w, {right: [(w.start_positions[right], w.end_positions[right], 5.0)]})
    for x in starts + ends:
        x[0] = 6.0  # [CLS] scores 12 in every window, the answer 10
    assert extract_answers(w, starts, ends, [CONTEXT], allow_null=True) == [""]
    assert extract_answers(w, starts, ends, [CONTEXT]) == [ANSWER]
    starts[0][0] = 3.0  # the lowest null score over the windows (6) is below the answer's: the answer stands
    assert extract_answers(w, starts, ends, [CONTEXT], allow_null=True) == [ANSWER]


def test_exact_match_and_f1_against_hand_computed_values():
    predictions = ["the cat sat", "a dog", "", "Paris", "something"]
    gold = [["The cat sat."], ["the big dog"], [], ["London", "paris!"], []]
    # EM: 1, 0, 1 (unanswerable, empty), 1 (best gold), 0 → 3/5; F1: 1, 2·1·½/(1+½) = ⅔, 1, 1, 0 → (3 + ⅔)/5
    scores = squad_metrics(predictions, gold)
    assert scores["exact_match"] == pytest.approx(0.6)
    assert scores["f1"] == pytest.approx((3 + 2 / 3) / 5, abs=1e-4) and scores["score"] == scores["f1"]


NAMES = ["anna lopez", "bob smith", "carla diaz", "dan brown", "eva stone", "finn gray"]
CITIES = ["paris", "lima", "oslo", "rome", "kyiv", "quito"]


def qa_row(rng: random.Random, unanswerable: bool = False) -> dict:
    """A passage with filler around one fact; the question asks for its person or its city."""
    name, city = rng.choice(NAMES), rng.choice(CITIES)
    before, after = " . ".join([FILLER] * rng.randint(0, 2)), " . ".join([FILLER] * rng.randint(0, 2))
    fact = f"the ending was written by {name} in {city}"
    context = " . ".join(x for x in (before, fact, after) if x) + " ."
    question, answer = rng.choice([("who wrote the ending", name), ("where was the ending written", city)])
    if unanswerable:
        return {"question": "who directed the film", "context": context, "answers": {"text": [], "answer_start": []}}
    start = context.index(fact) + fact.index(answer if answer == name else f"in {city}") + (0 if answer == name else 3)
    return {"question": question, "context": context, "answers": {"text": [answer], "answer_start": [start]}}


def write_qa(root, sizes=(("train", 240), ("dev", 40), ("test", 40)), unanswerable: float = 0.0) -> dict:
    rng = random.Random(7)
    paths = {}
    for split, n in sizes:
        paths[split] = root / f"qa_{split}.jsonl"
        paths[split].write_text("".join(json.dumps(qa_row(rng, rng.random() < unanswerable)) + "\n" for _ in range(n)))
    return paths


def qa_words() -> list[str]:
    return [FILLER, "the ending was written by in .", "who wrote the ending", "where was the ending written",
            "who directed the film", *NAMES, *CITIES]


def test_qa_rows_read_from_files_and_bad_offsets_are_one_line(tmp_path):
    paths = write_qa(tmp_path, unanswerable=0.2)
    data = load_task(TransferTask(name="qa", type="question_answering", **paths, stride=8, max_length=32))
    row = data.train[0]
    assert set(row) == {"question", "context", "answers", "answer_starts"} and data.num_labels == 2
    for r in data.train:
        for text, start in zip(r["answers"], r["answer_starts"]):
            assert r["context"][start:start + len(text)] == text
    assert data.allow_null and data.worker_spec() == {"type": "question_answering", "names": None, "num_labels": 2,
                                                      "stride": 8, "allow_null": True}
    bad = json.loads(paths["train"].read_text().splitlines()[0])
    bad["answers"] = {"text": ["nobody"], "answer_start": [3]}
    paths["train"].write_text(json.dumps(bad) + "\n")
    with pytest.raises(XdrayError, match=r"qa_train.jsonl:1: answer 'nobody' is not at character 3 of the context; fix"):
        load_task(TransferTask(name="qa", type="question_answering", **paths))
    with pytest.raises(ConfigError, match=r"stride 40 must be under half of max_length 64"):
        validate_config({"output_dir": str(tmp_path), "transfer": {"student": str(tmp_path), "tasks": [
            {"name": "qa", "type": "question_answering", **{k: str(v) for k, v in paths.items()}, "stride": 40,
             "max_length": 64}]}})


def test_squad_presets_offline_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(XdrayError, match=r"preset squad_v2 could not be loaded .*fix: it needs network access"):
        load_task(TransferTask(name="squad", preset="squad_v2"))


def test_qa_batches_are_windows_with_answer_spans_and_the_span_loss_trains(tokenizer, tmp_path):
    from xdray.distill.batches import table_batches
    from xdray.distill.objective import DistillModule, Objective
    from xdray.transfer.metrics import split_metric
    from xdray.transfer.model import task_collate

    paths = write_qa(tmp_path, (("train", 8), ("dev", 8), ("test", 8)))
    data = load_task(TransferTask(name="qa", type="question_answering", **paths, stride=8, max_length=32))
    spec = data.worker_spec()
    rows = data.train
    (raw,) = table_batches(pa.Table.from_pylist(rows), len(rows))
    batch = task_collate(spec)(raw, tokenizer, 32, "cpu")
    assert batch["input_ids"].shape[0] > len(rows) and batch["labels"].shape == (batch["input_ids"].shape[0], 2)
    windows = qa_windows(tokenizer, [r["question"] for r in rows], [r["context"] for r in rows], 32, 8,
                         [(r["answer_starts"][0], r["answers"][0]) for r in rows])
    for w, (s, e) in enumerate(batch["labels"].tolist()):
        if s:  # the labelled span reads back as the answer
            assert rows[windows.example[w]]["context"][windows.offsets[w][s][0]:windows.offsets[w][e][1]] \
                == rows[windows.example[w]]["answers"][0]
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_pretrained(tokenizer.name_or_path)
    module = DistillModule(model, None, 0)
    out = module(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch})
    assert out["logits"].shape == (*batch["input_ids"].shape, 2)
    loss = Objective(("span_ce",))(out, batch)["total"]
    loss.backward()
    assert torch.isfinite(loss) and model.qa_outputs.weight.grad.abs().sum() > 0
    # the dev metric over batches in order: logits that point at each window's gold span score EM 1
    metric = split_metric(spec, rows, tokenizer, 32)
    perfect = torch.full((*batch["input_ids"].shape, 2), -5.0)
    for w, (s, e) in enumerate(batch["labels"].tolist()):
        perfect[w, s, 0], perfect[w, e, 1] = (5.0, 5.0) if s else (-5.0, -5.0)
    assert metric([perfect[:3], perfect[3:]], [batch["labels"]])["exact_match"] == 1.0


def test_the_labeler_stores_each_windows_span_logits_and_dev_scores_and_distils_from_them(tokenizer, tmp_path):
    from xdray.distill.batches import collate, table_batches
    from xdray.distill.objective import DistillModule, Objective, teacher_targets
    from xdray.distill.role import qa_examples
    from xdray.distill.token_layout import Layout, bytes_per_token
    from xdray.label.labeler import ChunkLabeler
    from xdray.transfer.metrics import split_metric

    torch.manual_seed(0)
    teacher = AutoModelForQuestionAnswering.from_pretrained(tokenizer.name_or_path).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    rng = random.Random(3)
    rows = [qa_row(rng, unanswerable=i == 5) for i in range(12)]
    dev = pa.table({"id": [f"ex{i}" for i in range(len(rows))], "text": [r["question"] for r in rows],
                    "text_pair": [r["context"] for r in rows], "answers": [r["answers"]["text"] for r in rows],
                    "answer_starts": [r["answers"]["answer_start"] for r in rows]})
    layout = Layout("qa", num_labels=2, stride=8)
    labeler = ChunkLabeler(str(tmp_path / "teacher"), max_length=32, threads=1, batch_size=5, layout=layout.describe())
    out, stats = labeler.label_table(dev)
    answers = [(r["answers"]["answer_start"][0], r["answers"]["text"][0]) if r["answers"]["text"] else None
               for r in rows]
    windows = qa_windows(tokenizer, dev.column("text").to_pylist(), dev.column("text_pair").to_pylist(), 32, 8, answers)
    assert out.num_rows == stats["labelled"] == len(windows.example) > len(rows) and stats["rows"] == len(rows)
    assert out.column("input_ids").to_pylist() == windows.input_ids and len(set(out.column("id").to_pylist())) == out.num_rows
    assert out.column("start_positions").to_pylist() == windows.start_positions
    for w in (0, 1, out.num_rows - 1):  # the stored logits are the teacher's on that window alone (float16)
        ids = torch.tensor([windows.input_ids[w]])
        with torch.no_grad():
            expected = teacher(input_ids=ids, token_type_ids=torch.tensor([windows.token_type_ids[w]]))
        for name in ("start_logits", "end_logits"):
            np.testing.assert_allclose(out.column(name)[w].as_py(), getattr(expected, name)[0].numpy(), atol=2e-3)
    # start + end: 2 float16 per token, plus each window's two int32 offsets
    assert 4 <= bytes_per_token(out.select(["start_logits", "end_logits"]), layout) <= 4 + 8 / 12
    # dev is scored on the windows' examples, in order; batches carry the spans and the teacher's targets
    assert [r["example_id"] for r in qa_examples(out)] == dev.column("id").to_pylist()
    batches = [collate(raw, tokenizer, 32, "cpu", layout=layout) for raw in table_batches(out, 7)]
    assert torch.cat([b["labels"] for b in batches]).tolist() == [list(x) for x in zip(windows.start_positions,
                                                                                         windows.end_positions)]
    assert (batches[0]["teacher_span_mask"] == batches[0]["attention_mask"].bool()).all()
    spec = {"type": "question_answering", "names": None, "num_labels": 2, "stride": 8, "allow_null": True}
    metric = split_metric(spec, qa_examples(out), tokenizer, 32)
    perfect = [torch.stack([torch.where(torch.arange(b["input_ids"].shape[1]) == s, 5.0, -5.0) for s in b["labels"][:, i]])
               for b in batches for i in (0, 1)]
    scored = metric([torch.stack(perfect[k:k + 2], -1) for k in range(0, len(perfect), 2)], [])
    assert scored["exact_match"] == 1.0, scored
    with pytest.raises(ValueError, match="windows scored, the split's examples make"):
        metric([torch.stack(perfect[:2], -1)], [])
    # the span KD loss: ~0 for the teacher against its own stored logits, > 0 with gradients for another model
    kd = Objective(("logits_kl",), temperature=2.0)
    batch = batches[0]
    same = kd(DistillModule(teacher, None, 0)(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}),
              batch)["total"]
    assert float(same.detach()) < 1e-3
    torch.manual_seed(1)
    student = AutoModelForQuestionAnswering.from_pretrained(tokenizer.name_or_path)
    loss = kd(DistillModule(student, None, 0)(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}),
              batch)["total"]
    loss.backward()
    assert float(loss.detach()) > 10 * float(same.detach()) and student.qa_outputs.weight.grad.abs().sum() > 0
    online = teacher_targets(teacher, batch, kd)  # online mode: the same targets from the frozen teacher
    torch.testing.assert_close(online["teacher_start_logits"][batch["attention_mask"].bool()],
                               batch["teacher_start_logits"][batch["attention_mask"].bool()], atol=2e-3, rtol=1e-3)


def qa_job(root, paths: dict, encoder) -> dict:
    """A QA teacher (``data.task: question_answering``) on the tiny encoder, unlabelled (question, context) pairs to
    distil it on, and a transfer of the teacher onto the task."""
    rng = random.Random(11)
    (root / "questions.txt").write_text("".join("{question}\t{context}\n".format(**qa_row(rng)) for _ in range(320)))
    return {
        "output_dir": str(root / "out"), "mlflow": {"experiment": "xdray-qa"},
        "data": {"task": "question_answering", **{k: str(v) for k, v in paths.items()},
                 "transfer": [str(root / "questions.txt")], "max_length": 32, "stride": 8},
        "teacher": {"backbone": str(encoder), "epochs": 8, "lr": 3.0e-3, "batch_size": 4, "workers": 2,
                    "deepspeed": {"zero_stage": 2}},
        "distill": {"student": {"layers": 1, "hidden": 32, "heads": 2, "intermediate": 64, "init": "teacher-layers",
                                "embeddings": "copy"},
                    "stages": [{"name": "logits", "data": "transfer", "loss": "logits_kl", "epochs": 3,
                                "temperature": 2.0},
                               {"name": "labels", "data": "train", "loss": "ce", "epochs": 2}],
                    "lr": 3.0e-3, "batch_size": 8, "workers": 2, "deepspeed": {"zero_stage": 2}},
        "transfer": {"student": str(root / "out" / "teacher" / "model"), "epochs": 1, "lr": 3.0e-4, "batch_size": 4,
                     "workers": 2, "deepspeed": {"zero_stage": 2}, "latency_sentences": 4,
                     "tasks": [{"name": "qa", "type": "question_answering", **{k: str(v) for k, v in paths.items()},
                                "max_length": 32, "stride": 8}]},
    }


@pytest.fixture(scope="module")
def answered(ray_local, tmp_path_factory):
    """The teacher, its span logits on the unlabelled pairs, a student distilled from them (then the labels), and
    the teacher transferred onto the task: the summaries, and the labelled data's manifest."""
    from xdray.cli import main

    root = tmp_path_factory.mktemp("qa-transfer")
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(qa_job(root, write_qa(root), build_tiny_backbone(root / "encoder", qa_words()))))
    for step in ("teacher", "label", "distill", "transfer"):
        assert main([step, str(job)]) == 0, step
    summaries = {step: json.loads((root / "out" / step / "summary.json").read_text())
                 for step in ("teacher", "label", "distill")}
    summaries["transfer"] = json.loads((root / "out" / "transfer" / "summary.json").read_text())["tasks"]["qa"]
    return job, summaries, json.loads((root / "out" / "label" / "data" / "_manifest.json").read_text())


@pytest.mark.slow
def test_a_qa_teacher_learns_to_answer_across_windows_and_transfers(answered):
    _, done, _ = answered
    teacher, result = done["teacher"], done["transfer"]
    assert teacher["test"]["exact_match"] > 0.5, teacher["test"]  # 8 epochs from a random encoder: 0.875-1.0
    assert result["test"]["f1"] > 0.6, result["test"]  # a fresh head on the teacher's encoder, 1 epoch: 0.82-0.85
    for summary in (teacher, result):
        assert summary["type"] == "question_answering" and summary["metric"] == "f1" and summary["workers"] == 2
        assert summary["test"]["f1"] >= summary["test"]["exact_match"], summary["test"]
        assert summary["dev_score"] == pytest.approx(max(e["dev_score"] for e in summary["history"]), abs=1e-6)
        model = AutoModelForQuestionAnswering.from_pretrained(summary["model_dir"])  # a standard HF QA model
        assert model.config.num_labels == 2 and summary["mlflow_artifact_uri"].endswith("/model")
    assert len(teacher["history"]) == 8 and len(result["history"]) == 1


@pytest.mark.slow
def test_a_qa_student_distils_the_teachers_span_logits_on_unlabelled_pairs(answered):
    job, done, manifest = answered
    label, student, teacher = done["label"], done["distill"], done["teacher"]
    assert manifest["layout"] == {"kind": "qa", "positions": "first_subword", "top_k": None, "num_labels": 2,
                                  "stride": 8, "lossless": True}
    assert label["rows"] > 320 and label["dev_rows"] > 40  # windows: some contexts are longer than one
    assert student["type"] == "question_answering" and student["metric"] == "f1" and student["workers"] == 2
    assert student["phases"] == ["logits", "labels"] and "dev_accuracy" not in student
    # one block of the teacher's two, from the teacher's logits on 320 unlabelled pairs and 2 epochs of labels
    assert student["test"]["f1"] > 0.5 and student["test"]["f1"] >= 0.6 * teacher["test"]["f1"], student["test"]
    model = AutoModelForQuestionAnswering.from_pretrained(student["model_dir"])
    assert model.config.num_hidden_layers == 1 and student["mlflow_artifact_uri"].endswith("/model")


def test_qa_sources_are_refused_by_the_search_in_one_line(tmp_path, capsys):
    from xdray.cli import main

    paths = write_qa(tmp_path, (("train", 4), ("dev", 4), ("test", 4)))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(qa_job(tmp_path, paths, tmp_path)))
    source = load_config(job).source_task()
    assert (source.type, source.stride, source.max_length) == ("question_answering", 8, 32)
    for step in ("search", "pipeline"):
        assert main([step, str(job)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "data.task question_answering: xdray search" in err[0], err
    raw = qa_job(tmp_path, paths, tmp_path)
    with pytest.raises(ConfigError, match=r"data.stride 16 must be under half of max_length 32"):
        validate_config({**raw, "data": {**raw["data"], "stride": 16}})
