"""`xdray data paraphrase` on a small SWORD zText module and KJV OSIS file written here in the packages' layouts
(the real ones arrive by apt-get download): markup stripped to the words, verses aligned by key, neighbours as
hard negatives, chapters (not verses) split, and a module of another versification refused in one line."""

from __future__ import annotations

import struct
import zlib

import pytest

from xdray.cli import main
from xdray.data.bible import KJV_XML, N_OT_BOOKS, WEB_MODULE, nrsva_canon, osis_to_text, read_kjv, read_sword_ztext
from xdray.data.paraphrase import build_pairs, prepare_paraphrase
from xdray.errors import XdrayError

DAYS = "one two three four five six".split()
WEB = {("Gen", 1, v): f'<w lemma="strong:H{v}">And</w> the <q who="x">light</q> was made on day {DAYS[v - 1]}'
       '<note type="x-footnote">a <reference>note</reference></note>, it was good.' for v in range(1, 7)}
WEB |= {("John", 3, v): f"<title>Heading</title>Verse of John number {v} in the modern words." for v in range(14, 19)}
WEB[("John", 3, 16)] = "For God so loved the world."  # the same words in both: not a paraphrase to learn


def slot(key) -> tuple[str, int]:
    """The testament and verse slot of ``key`` in an NRSVA zText index."""
    canon = nrsva_canon()
    testament, books = ("ot", canon[:N_OT_BOOKS]) if any(b == key[0] for b, _ in canon[:N_OT_BOOKS]) \
        else ("nt", canon[N_OT_BOOKS:])
    i = 2
    for book, chapters in books:
        i += 1
        for c, n in enumerate(chapters, 1):
            i += 1
            if (book, c) == key[:2]:
                return testament, i + key[2] - 1
            i += n
    raise KeyError(key)


def write_ztext(module, verses: dict, extra_slots: int = 0) -> None:
    """A SWORD zText module: one zlib block per testament, a 10-byte index record per verse slot."""
    module.mkdir(parents=True)
    canon = nrsva_canon()
    for testament, books in (("ot", canon[:N_OT_BOOKS]), ("nt", canon[N_OT_BOOKS:])):
        slots = [(0, 0, 0)] * (2 + sum(1 + len(ch) + sum(ch) for _, ch in books) + extra_slots)
        block = b""
        for key, text in verses.items():
            where, i = slot(key)
            if where == testament:
                data = text.encode()
                slots[i] = (0, len(block), len(data))
                block += data
        packed = zlib.compress(block)
        (module / f"{testament}.bzz").write_bytes(packed)
        (module / f"{testament}.bzs").write_bytes(struct.pack("<III", 0, len(packed), len(block)))
        (module / f"{testament}.bzv").write_bytes(b"".join(struct.pack("<IIH", *s) for s in slots))


def write_kjv(path, verses: dict) -> None:
    body = "".join(f'<verse osisID="{b}.{c}.{v}" sID="{b}.{c}.{v}"/>{t}<verse eID="{b}.{c}.{v}"/>'
                   for (b, c, v), t in verses.items())
    path.parent.mkdir(parents=True)
    path.write_text(f'<osis><title type="psalm">A title</title>{body}</osis>', encoding="utf-8")


def fake_debian(cache, extra_slots: int = 0) -> None:
    for name in ("sword-text-web", "bibledit-data"):
        (cache / f"{name}_1.0-1_all.deb").parent.mkdir(parents=True, exist_ok=True)
        (cache / f"{name}_1.0-1_all.deb").write_bytes(b"")
        (cache / name).mkdir()
        (cache / name / ".unpacked").touch()
    write_ztext(cache / "sword-text-web" / WEB_MODULE, WEB, extra_slots)
    kjv = {k: f"<w>And</w> the light was made in the old words, verse {k[2]} of {k[0]}." for k in WEB}
    kjv[("John", 3, 16)] = "For God so loved the world."
    write_kjv(cache / "bibledit-data" / KJV_XML, kjv)


def test_osis_markup_is_stripped_to_the_words():
    assert osis_to_text('God<note>a <reference>Gen 1</reference></note><w lemma="H1">created</w> , all.') \
        == "God created, all."
    assert osis_to_text("<title>Psalm of David</title>Yahweh is my <divineName>shepherd</divineName> ;") \
        == "Yahweh is my shepherd;"
    assert osis_to_text('the <w lemma="G1">priests</w><w lemma="G2">and</w> <w>said</w>, “What') \
        == "the priests and said, “What"  # two words with no space between their tags


def test_verses_align_and_pairs_split_by_chapter(tmp_path):
    fake_debian(tmp_path / "out" / ".cache")
    manifest = prepare_paraphrase(tmp_path / "out")
    web = read_sword_ztext(tmp_path / "out" / ".cache" / "sword-text-web" / WEB_MODULE)
    assert web[("Gen", 1, 1)] == "And the light was made on day one, it was good." and len(web) == len(WEB)
    assert web[("John", 3, 14)] == "Verse of John number 14 in the modern words."  # the heading dropped
    assert read_kjv(tmp_path / "out" / ".cache" / "bibledit-data")[("Gen", 1, 2)].startswith("And the light")
    assert manifest["dropped"] == {"same_text": 1} and sum(manifest["rows"].values()) == len(WEB) - 1
    rows = {}
    for name in manifest["rows"]:
        lines = (tmp_path / "out" / "bible" / f"{name}.tsv").read_text().splitlines()
        assert lines[0] == "text\ttext_pair\tlabel"
        rows[name] = [line.split("\t") for line in lines[1:]]
    for chapter in ("Gen", "John"):  # a chapter's verses stay in one split
        assert sum(any(chapter in text for text, _, _ in split) for split in rows.values()) == 1, chapter
    for split in rows.values():
        for text, pair, label in split:
            verse = text.split("verse ")[1].split(" ")[0]
            v = int(verse)
            same = f"number {v} " in pair if "John" in text else f"day {DAYS[v - 1]}," in pair
            assert same == (label == "1"), (text, pair, label)  # a negative is another verse of the chapter
    assert prepare_paraphrase(tmp_path / "out") == manifest  # idempotent


def test_negatives_are_neighbours_and_classes_balance():
    kjv = {("Ps", 1, v): f"old {v} words here" for v in range(1, 401)}
    web = {("Ps", 1, v): f"new {v} words here" for v in range(1, 401)}
    splits, dropped = build_pairs(kjv, web)
    rows = [r for split in splits.values() for r in split]
    assert len(rows) == 400 and not dropped and 160 < sum(r["label"] for r in rows) < 240
    for r in rows:
        a, b = int(r["text"].split()[1]), int(r["text_pair"].split()[1])
        assert (a == b) == (r["label"] == 1) and abs(a - b) <= 2


def test_a_module_of_another_versification_is_one_line(tmp_path, capsys):
    fake_debian(tmp_path / "out" / ".cache", extra_slots=3)
    assert main(["data", "paraphrase", "--dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "verse slots where NRSVA needs" in err and "fix:" in err
    assert not (tmp_path / "out" / "MANIFEST.json").exists()
    with pytest.raises(XdrayError, match="not the engWEB2015eb module"):
        read_sword_ztext(tmp_path / "out" / ".cache" / "sword-text-web" / WEB_MODULE)
