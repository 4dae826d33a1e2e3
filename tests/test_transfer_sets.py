"""Transfer benchmark data: the WordNet data.verb parser on real-format lines, the fixed-seed splits, and the whole
command on a synthetic data.verb plus a synthetic VADER sdist (no network, no Ray)."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import pytest

from xdray import cli
from xdray.data import samples, transfer_sets
from xdray.data.transfer_sets import VERB_LEXNAMES, parse_data_verb, prepare_transfer_sets, prepare_wordnet_verbs
from xdray.errors import XdrayError

LICENSE = [
    "  1 This software and database is being provided to you, the LICENSEE, by  ",
    "  2 Princeton University under the following license.  By obtaining, using  ",
    "  3   ",
]
BREATHE = ("00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 002 * 00005041 v 0000 $ 00002325 v 0000 "
           '02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; "I can breathe better when the air is '
           'clean"; "The patient is respiring"  ')
ASCEND = ("01974062 38 v 0a " + " ".join(f"w{i} 0" for i in range(10)) + " 001 @ 01835496 v 0000 01 + 01 00 | "
          'travel up, "We ascended the mountain"; "go up a ladder"  ')
RAIN = '02756558 43 v 01 rain 0 000 01 + 01 00 | precipitate as rain; "If it rains much more, we can expect flooding"  '
ENCLOSE = '01131043 35 v 01 enclose 1 000 01 + 08 00 | close in; darkness enclosed him"  '
REACH = '02522864 41 v 01 make 4 000 01 + 01 00 | reach a goal, e.g., "make the first team"; "We made it!"  '
NO_EXAMPLE = "00002573 29 v 01 respire 2 000 01 + 02 00 | breathe easily again, as after exertion or anxiety  "


def synset(offset: int, lex_filenum: int, definition: str) -> str:
    return f"{offset:08d} {lex_filenum} v 01 verb{offset} 0 000 01 + 01 00 | {definition}; \"an example\"  "


def test_parser_takes_definitions_and_lexnames_skipping_the_license():
    rows = parse_data_verb(LICENSE + [BREATHE, ASCEND, RAIN, ENCLOSE, REACH, NO_EXAMPLE])
    assert rows == [
        ("draw air into, and expel out of, the lungs", "verb.body"),
        ("travel up", "verb.motion"),  # w_cnt 0a: ten words, read as hexadecimal
        ("precipitate as rain", "verb.weather"),
        ("close in", "verb.contact"),  # its example lost the opening quote in WordNet itself
        ("reach a goal", "verb.social"),
        ("breathe easily again, as after exertion or anxiety", "verb.body"),
    ]
    assert len(VERB_LEXNAMES) == 15 and set(VERB_LEXNAMES) == set(range(29, 44))


def test_parser_drops_empty_and_repeated_definitions_keeping_the_first_label():
    lines = [synset(1, 30, "alter"), synset(2, 30, "alter"), synset(3, 38, "alter"), synset(4, 38, "  "),
             '00000005 38 v 01 go 0 000 | "go away"  ', synset(6, 38, "move")]
    assert parse_data_verb(lines) == [("alter", "verb.change"), ("move", "verb.motion")]


@pytest.mark.parametrize("line, match", [
    ("00001740 03 v 01 entity 0 000 | that which exists", r"lex_filenum 03 is not a verb synset.*fix:"),
    ("00001740 03 n 01 entity 0 000 | that which exists", r"ss_type n, .*not a verb synset.*fix:"),
    ("00001740 29 v 01 breathe 0 000 01 + 02 00 no gloss separator", r"line 2: not a WordNet synset line.*fix:"),
    ("00001740 29 v 0a breathe 0 000 | too few words for w_cnt 0a", r"not a WordNet synset line.*fix:"),
])
def test_parser_rejects_lines_that_are_not_verb_synsets(line, match):
    with pytest.raises(XdrayError, match=match):
        parse_data_verb([LICENSE[0], line])


def test_split_is_80_10_10_fixed_seed_and_leaves_the_input_alone():
    rows = list(range(1000))
    splits = transfer_sets.split_rows(rows)
    assert {k: len(v) for k, v in splits.items()} == {"train": 800, "dev": 100, "test": 100}
    assert sorted(splits["train"] + splits["dev"] + splits["test"]) == rows and rows == list(range(1000))
    assert transfer_sets.split_rows(rows) == splits and splits["train"] != rows[:800]
    assert transfer_sets.split_rows(rows, seed=14) != splits


def read_tsv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture
def data_verb(tmp_path):
    path = tmp_path / "data.verb"
    lines = LICENSE + [synset(i, 29 + i % 15, f"definition number {i}") for i in range(200)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_wordnet_splits_are_deterministic_files_with_label_names(tmp_path, data_verb):
    entry = prepare_wordnet_verbs(tmp_path / "a", data_verb)
    prepare_wordnet_verbs(tmp_path / "b", data_verb)
    assert entry["rows"] == {"train": 160, "dev": 20, "test": 20}
    assert sum(sum(c.values()) for c in entry["class_counts"].values()) == 200
    for name in ("train", "dev", "test"):
        a, b = (tmp_path / d / "wordnet_verbs" / f"{name}.tsv" for d in "ab")
        assert a.read_bytes() == b.read_bytes()
        rows = read_tsv(a)
        assert list(rows[0]) == ["text", "label"] and len(rows) == entry["rows"][name]
        for row in rows:
            assert row["label"] == VERB_LEXNAMES[29 + int(row["text"].split()[-1]) % 15]


def fake_vader_sdist(path, tweets: list[tuple[str, str]]) -> None:
    """The layout ``samples._read_ground_truth`` reads: a tarball nested in the sdist, one file per domain."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for domain in samples.DOMAINS:
            rows = tweets if domain == "tweets" else [("a snippet", "0.5")]
            data = "".join(f"{i}\t{r}\t{t}\n" for i, (t, r) in enumerate(rows)).encode()
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{domain}_GroundTruth.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = inner.tell()
        inner.seek(0)
        tar.addfile(info, inner)


def test_transfer_sets_command_writes_both_tasks_once(tmp_path, data_verb, capsys):
    out = tmp_path / "transfer"
    tweets = [(f"tweet {i} @anonymous", f"{(i % 9) - 4 + 0.123456789:.9f}") for i in range(50)]
    fake_vader_sdist(out / ".cache" / "vaderSentiment-3.3.2.tar.gz", tweets)
    assert cli.main(["data", "transfer-sets", "--dir", str(out), "--data-verb", str(data_verb)]) == 0
    assert "wordnet_verbs 15-class (train 160, dev 20, test 20)" in capsys.readouterr().out
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["seed"] == transfer_sets.SPLIT_SEED
    assert manifest["vader_tweets"]["rows"] == {"train": 40, "dev": 5, "test": 5}
    assert manifest["vader_tweets"]["source"].startswith("vaderSentiment==3.3.2")
    written = [row for name in ("train", "dev", "test") for row in read_tsv(out / "vader_tweets" / f"{name}.tsv")]
    assert sorted((r["text"], float(r["label"])) for r in written) == sorted((t, float(r)) for t, r in tweets)
    assert all(r["label"] in {rating for _, rating in tweets} for r in written)  # the rating as given

    before = (out / "wordnet_verbs" / "train.tsv").stat().st_mtime_ns
    assert prepare_transfer_sets(out, data_verb=tmp_path / "missing") == manifest  # complete: a no-op
    assert (out / "wordnet_verbs" / "train.tsv").stat().st_mtime_ns == before


def test_missing_apt_get_or_file_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(XdrayError, match=r"apt-get not found.*; fix: .*--data-verb PATH"):
        prepare_wordnet_verbs(tmp_path / "out")
    with pytest.raises(XdrayError, match=r"--data-verb: not found: .*; fix:"):
        prepare_wordnet_verbs(tmp_path / "out", tmp_path / "nope" / "data.verb")
    assert not (tmp_path / "out" / "MANIFEST.json").exists()
