"""`bench/agnostic.py`'s plumbing without Ray: both profiles' study configs (the gpu one's GPU workers, bf16, whole
corpus and L6 student), the runs a profile wants, finished runs recorded and skipped, the baseline students, and
the paper-style table from records. The Ray path it drives is `xdray study` and `xdray transfer`, tested in
tests/test_study.py and tests/test_transfer.py."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from xdray.config import validate_config

from .conftest import build_tiny_backbone

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import agnostic  # noqa: E402


def test_both_profiles_make_a_valid_study_with_their_shapes(tmp_path):
    data = agnostic.Data(tmp_path)
    gpu = validate_config(agnostic.study_config(agnostic.PROFILES["gpu"], data, tmp_path / "out"))
    cpu = validate_config(agnostic.study_config(agnostic.PROFILES["cpu"], data, tmp_path / "out"))
    assert gpu.distill.use_gpu and gpu.teacher.use_gpu and gpu.transfer.use_gpu and gpu.label.gpus_per_actor == 1
    assert gpu.distill.deepspeed.precision == "bf16" and gpu.data.max_transfer_rows is None  # the whole corpus
    assert (gpu.distill.student.layers, gpu.distill.student.hidden) == (6, 384)
    assert gpu.teacher.backbone.endswith("teachers/mpnet-base") and cpu.teacher.backbone.endswith("minilm-l6")
    assert not cpu.distill.use_gpu and cpu.data.max_transfer_rows == 20_000
    assert (cpu.distill.student.layers, cpu.distill.student.init_layers) == (3, [1, 3, 5])
    assert [s.name for s in cpu.distill.stages] == ["hidden", "logits", "labels"]  # the paper's schedule
    assert cpu.data.transfer[0].path == tmp_path / "general" / "corpus.txt"  # jobs/study.yaml's data/ under --data
    assert cpu.distill.student.init == f"pretrained:{tmp_path / 'samples' / 'minilm-l6'}"
    assert {t.max_train_rows for t in cpu.transfer.tasks} == {1000} and {t.max_train_rows for t in gpu.transfer.tasks} == {None}
    for cfg in (cpu, gpu):
        movies, bible = (cfg.source_config(s) for s in agnostic.SOURCES)
        assert [t.name for t in movies.transfer.tasks] == list(agnostic.TARGETS)
        assert [t.name for t in bible.transfer.tasks] == [t for t in agnostic.TARGETS if t != "paraphrase"]
        assert bible.data.pairs and [s.path for s in bible.data.transfer] == [tmp_path / "general" / "pairs.txt"]
        assert movies.data.transfer == cfg.data.transfer  # one corpus: the pair source reads it as pairs
    wanted = agnostic.runs_wanted(3)
    assert len(wanted) == 3 * (5 + 4 + 3 * 5) and wanted[0][2] == 0 and wanted[-1][2] == 2  # seeds outermost
    assert ("distilled/bible", "paraphrase", 0) not in wanted
    assert {a for a, _, _ in agnostic.runs_wanted(1, agnostic.chosen_arms("baselines,distilled/movies"))} == {
        "undistilled", "random", "teacher", "distilled/movies"}
    with pytest.raises(SystemExit, match="--arms: unknown arm 'distilled/news'"):
        agnostic.chosen_arms("distilled/news")
    one = validate_config(agnostic.study_config(agnostic.PROFILES["cpu"], data, tmp_path / "out", ("bible",)))
    assert list(one.study.sources) == ["bible"]  # a session too short for both runs one source's study
    assert [s.epochs for s in cpu.distill.stages] == [2, 1, 3] and [s.epochs for s in gpu.distill.stages] == [3, 1, 3]


def fake_result(score: float, params: int = 1000) -> dict:
    return {"metric": "f1", "test": {"score": score}, "params": {"total": params}, "seconds": 1.0}


def test_recorded_runs_are_skipped_and_tabled_like_the_paper(tmp_path):
    records = agnostic.Records(tmp_path / "r.jsonl")
    for arm, task, seed in agnostic.runs_wanted(2):
        score = 0.5 + 0.1 * (arm == "distilled/movies") + 0.01 * seed
        records.add(agnostic.record_of(arm, task, seed, fake_result(score, 2000 if arm == "teacher" else 1000)))
    records.add({"kind": "speed", "teacher_ms": 10.0, "student_ms": 4.0})
    records.add({"kind": "source", "source": "movies", "teacher_test": 0.87, "student_test": 0.84,
                 "student_params": 1000, "seconds": {"teacher": 100.0, "label": 50.0, "distill": 1200.0,
                                                     "transfer": 300.0}})
    records.add(agnostic.record_of("random", "spam", 2, fake_result(0.5)))  # a third seed begun, not finished
    again = agnostic.Records(tmp_path / "r.jsonl")  # a later session reads what is there
    assert len(again.rows) == len(records.rows) and again.get(arm="random", task="spam", seed=1)["score"] == 0.51
    rows = agnostic.summarise(again, 2)
    assert len(rows) == 5 + 4 + 3 * 5
    movies = next(r for r in rows if r["arm"] == "distilled/movies" and r["task"] == "spam")
    assert movies == {"arm": "distilled/movies", "source": "movies", "task": "spam", "metric": "f1", "mean": 0.605,
                      "std": pytest.approx(0.0071, abs=1e-4), "params": 1000, "seeds": 2}
    assert agnostic.summarise(again, 3) == []  # no arm has all its third-seed fine-tunes yet
    table = agnostic.markdown(rows, again, "cpu", 2).splitlines()
    assert table[0] == "| arm | params | speedup | " + " | ".join(agnostic.TARGETS) + " | average |"
    bible = next(line for line in table if line.startswith("| distilled/bible"))
    assert "(source)" in bible and bible.endswith("| 50.5 |")  # averaged over the 4 targets every arm has
    speedups = {line.split(" | ")[0]: line.split(" | ")[2] for line in table if line.startswith("| ")}
    assert speedups["| distilled/movies"] == speedups["| random"] == "2.5x" and speedups["| teacher"] == "1.0x"
    assert "average over wordnet_verbs, vader_tweets, spam, wnut16;" in table[-1]
    assert "source movies: teacher 87.0, student 84.0 on its own test (teacher 100 s, label 50 s, distill 1,200 s, " \
        "transfer 300 s)" in table


def test_table_only_prints_what_is_recorded_and_runs_nothing(tmp_path, capsys):
    records = agnostic.Records(tmp_path / "r.jsonl")
    for arm, task, seed in agnostic.runs_wanted(1, ("undistilled", "random")):
        records.add(agnostic.record_of(arm, task, seed, fake_result(0.5 + 0.1 * (arm == "undistilled"))))
    before = records.path.read_text()
    out = tmp_path / "out"
    assert agnostic.main(["--profile", "cpu", "--seeds", "1", "--table-only", "--results", str(records.path),
                          "--out", str(out), "--data", str(tmp_path / "no-data")]) == 0
    printed = capsys.readouterr()
    assert len(printed.out.splitlines()) == 2 * len(agnostic.TARGETS)  # one JSON line per arm and task
    assert "| undistilled | 0.0M |  | 60.0 | 60.0 |" in printed.err and "| random |" in printed.err
    assert not out.exists() and records.path.read_text() == before and not records.path.with_suffix(".md").exists()


def test_the_baselines_are_minilms_blocks_as_initialised_and_random(tmp_path):
    data = agnostic.Data(tmp_path)
    build_tiny_backbone(data.minilm, ["a tiny corpus of words", "for a tiny tokenizer to learn from"] * 20)
    tiny = replace(agnostic.PROFILES["cpu"], student={"layers": 1, "init_layers": [1], "hidden": 32, "heads": 2,
                                                      "intermediate": 64, "embeddings": "copy"})
    undistilled = AutoModel.from_pretrained(agnostic.baseline_student(tiny, data, tmp_path / "out", "undistilled"))
    random = AutoModel.from_pretrained(agnostic.baseline_student(tiny, data, tmp_path / "out", "random"))
    source = AutoModel.from_pretrained(data.minilm)
    block = "encoder.layer.0.attention.self.query.weight"
    mine, theirs = undistilled.state_dict(), source.state_dict()
    torch.testing.assert_close(mine[block], theirs["encoder.layer.1.attention.self.query.weight"])  # its block 1
    torch.testing.assert_close(mine["embeddings.word_embeddings.weight"], theirs["embeddings.word_embeddings.weight"])
    assert not torch.equal(random.state_dict()[block], mine[block])
