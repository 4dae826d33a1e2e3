"""`xdray study`: one student per source task over the same transfer corpus, each fine-tuned on the same targets
(a target that is the source's own task left out), on a local Ray with DeepSpeed; the study's config checks, in
one line each, before Ray starts."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from xdray.config import ConfigError, load_config, validate_config
from xdray.data.tables import LabeledSplit, write_labeled

from .conftest import _sentence, tiny_config
from .test_transfer import write_tasks

ONE_WORKER = {"workers": 1, "batch_size": 16}


def pair_source(root, n: int = 120) -> dict:
    """A sentence-pair source task: does the second sentence agree with the first's sentiment?"""
    rng = random.Random(9)
    paths = {}
    for split, rows in (("train", n), ("dev", 40), ("test", 40)):
        firsts = [rng.random() < 0.5 for _ in range(rows)]
        labels = [i % 2 for i in range(rows)]
        split_rows = LabeledSplit([_sentence(rng, f) for f in firsts], labels,
                                  [_sentence(rng, f if y else not f) for f, y in zip(firsts, labels)])
        write_labeled(root / f"pairs_{split}.tsv", split_rows)
        paths[split] = str(root / f"pairs_{split}.tsv")
    return paths | {"pairs": True}


def corpus_pairs(task: dict, root):
    """The tiny corpus as ``sentence<TAB>next sentence`` lines: what a pair source reads (``study.transfer_pairs``)."""
    lines = task["transfer"].read_text().splitlines()
    path = root / "pairs.txt"
    path.write_text("".join(f"{a}\t{b}\n" for a, b in zip(lines, lines[1:])))
    return path


def study_config(task: dict, root) -> dict:
    targets = write_tasks(root, {"train": 96, "dev": 32, "test": 32})
    movies = {k: str(task[k]) for k in ("train", "dev", "test")}
    own = {"name": "movies", "type": "classification", **movies}  # the movie source's own task: left out for it
    return tiny_config(
        task, root / "out",
        teacher=ONE_WORKER,  # the tiny teacher's usual 4 epochs at 2e-3: at 3 at 5e-3 it sometimes learnt nothing
        distill={"stages": [{"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": 1},
                            {"name": "labels", "data": "train", "loss": "ce", "epochs": 1}], **ONE_WORKER},
        transfer={"epochs": 1, "lr": 3.0e-3, "latency_sentences": 4, **ONE_WORKER,
                  "tasks": [targets["reg"], own]},
        study={"sources": {"movies": movies, "pairs": pair_source(root)},
               "transfer_pairs": [str(corpus_pairs(task, root))]},
    )


def test_study_configs_are_checked_per_source_in_one_line(tiny_task, tmp_path, capsys):
    from xdray.cli import main

    raw = study_config(tiny_task, tmp_path)
    cfg = validate_config(raw)
    movies, pairs = (cfg.source_config(n) for n in ("movies", "pairs"))
    assert movies.output_dir == cfg.output_dir / "sources" / "movies" and pairs.data.pairs and not movies.data.pairs
    assert [t.name for t in movies.transfer.tasks] == ["reg"]  # its own task is no transfer
    assert [t.name for t in pairs.transfer.tasks] == ["reg", "movies"]
    assert movies.data.transfer == cfg.data.transfer and movies.mlflow.tracking_uri == pairs.mlflow.tracking_uri
    assert [s.path for s in pairs.data.transfer] == [tmp_path / "pairs.txt"]  # the pair source reads the pairs
    with pytest.raises(ConfigError, match=r"study.transfer_pairs: no source sets pairs: true, .*; fix"):
        validate_config({**raw, "study": {**raw["study"], "sources": {"movies": raw["study"]["sources"]["movies"]}}})
    assert movies.mlflow.tracking_uri.endswith(f"{cfg.output_dir}/mlflow.db")  # one store for the whole study
    bad = {**raw, "study": {"sources": {"pairs": {**raw["study"]["sources"]["pairs"], "transfer": ["x.txt"]}}}}
    with pytest.raises(ConfigError, match=r"study.sources.pairs.transfer: a source sets only its labeled task"):
        validate_config(bad)
    bad = {**raw, "study": {"sources": {"pairs": {**raw["study"]["sources"]["pairs"], "max_length": 2}}}}
    with pytest.raises(ConfigError, match=r"^study.sources.pairs: data.max_length: .*; fix"):
        validate_config(bad)  # a source's own config is checked when the study's loads
    with pytest.raises(ConfigError, match=r"study: label.teacher names one model .* for every source; fix: remove"):
        validate_config({**raw, "label": {**raw["label"], "teacher": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"study: needs data .* and transfer.tasks"):
        validate_config({k: v for k, v in raw.items() if k != "transfer"})
    missing = {**raw, "study": {"sources": {"gone": {"train": str(tmp_path / "nope.tsv"), "dev": raw["data"]["dev"],
                                                     "test": raw["data"]["test"]}}}}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(missing))
    assert main(["study", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study.sources.gone: data.train: not found:" in err[0], err


@pytest.fixture(scope="module")
def studied(ray_local, tiny_task, tmp_path_factory):
    from xdray.cli import main

    root = tmp_path_factory.mktemp("study")
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(study_config(tiny_task, root)))
    assert main(["study", str(job)]) == 0
    return job, json.loads((root / "out" / "study" / "summary.json").read_text())


@pytest.mark.slow
def test_a_study_distils_one_student_per_source_and_measures_each_on_the_targets(studied):
    from mlflow.tracking import MlflowClient

    from xdray.cli import main
    from xdray.common.tracking import tracking_uri

    job, summary = studied
    movies, pairs = summary["sources"]["movies"], summary["sources"]["pairs"]
    assert set(movies["tasks"]) == {"reg"} and set(pairs["tasks"]) == {"reg", "movies"}
    assert summary["common_tasks"] == ["reg"] and summary["best"] == max(("movies", "pairs"), key=lambda n: summary[
        "sources"][n]["tasks"]["reg"]["score"])
    for result in (movies, pairs):  # ranked on the targets both were measured on
        assert result["average"] == pytest.approx(result["tasks"]["reg"]["score"], abs=1e-4)
        assert result["student_params"] < 1e6
    assert movies["teacher_test"] > 0.6, movies  # the sentiment source is learnt
    cfg = load_config(job)
    for name in ("movies", "pairs"):  # each source has its own teacher, labels and student
        sub = cfg.source_config(name)
        assert (sub.teacher_dir / "config.json").is_file() and (sub.labels_dir / "_manifest.json").is_file()
        manifest = json.loads((sub.labels_dir / "_manifest.json").read_text())
        assert manifest["pairs"] == (name == "pairs")
        read = cfg.study.transfer_pairs if name == "pairs" else cfg.data.transfer  # the pair source: its pairs
        assert [s["path"] for s in manifest["fingerprint"]["sources"]] == [str(s.path) for s in read]
    client = MlflowClient(tracking_uri(cfg))
    children = client.search_runs([client.get_experiment_by_name("xdray-test").experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{summary['mlflow_run_id']}'")
    assert sorted(r.info.run_name for r in children) == sorted(["teacher", "label", "distill", "transfer"] * 2)
    assert main(["study", str(job)]) == 0  # complete: every step is skipped, the same table again
    again = json.loads((cfg.step_dir("study") / "summary.json").read_text())
    assert again["sources"] == summary["sources"]
