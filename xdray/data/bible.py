"""Verse-aligned King James (KJV) and World English (WEB) Bibles from two Debian packages, in plain Python:
general English text, and the two sides of a paraphrase task.

- WEB: ``sword-text-web`` ships the SWORD module ``engWEB2015eb`` (driver zText, OSIS markup, zlib, NRSVA
  versification; public domain).
- KJV: ``bibledit-data`` ships CrossWire's OSIS source of its KJV module (KJV 1769, Strong's-tagged; public
  domain outside the UK, where the Crown patent applies) as ``usr/share/bibledit/sources/kjv.xml``.

Both name verses by OSIS ids, so keys are ``(osis_book, chapter, verse)``, e.g. ``("John", 3, 16)``. Markup is
stripped to the words of the verse: notes, Strong's numbers, headings and Psalm superscriptions are dropped
(Psalm titles sit outside the verse in the KJV, so dropping them in the WEB keeps the pair parallel).
"""

from __future__ import annotations

import html
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from xdray.data.debian import fetch_deb
from xdray.errors import XdrayError

Key = tuple[str, int, int]

WEB_MODULE = "usr/share/sword/modules/texts/ztext/engWEB2015eb"
KJV_XML = "usr/share/bibledit/sources/kjv.xml"
PACKAGES = ("sword-text-web", "bibledit-data")
_FIX = "fix: check network access to the Debian archive (apt-get download), or delete the cache to fetch it again"

# SWORD's NRSVA versification (libsword 1.9 canon_nrsva.h + NT of canon.h): each OSIS book id
# followed by its verses per chapter, in module order (OT incl. deuterocanon, then NT).  A zText
# index has no keys, only slots in this order, so the table is what turns slots into verses.
_NRSVA = """
Gen 31 25 24 26 32 22 24 22 29 32 32 20 18 24 21 16 27 33 38 18 34 24 20 67 34 35 46 22 35
43 55 32 20 31 29 43 36 30 23 23 57 38 34 34 28 34 31 22 33 26
Exod 22 25 22 31 23 30 25 32 35 29 10 51 22 31 27 36 16 27 25 26 36 31 33 18 40 37 21 43 46
38 18 35 23 35 35 38 29 31 43 38
Lev 17 16 17 35 19 30 38 36 24 20 47 8 59 57 33 34 16 30 37 27 24 33 44 23 55 46 34
Num 54 34 51 49 31 27 89 26 23 36 35 16 33 45 41 50 13 32 22 29 35 41 30 25 18 65 23 31 40
16 54 42 56 29 34 13
Deut 46 37 29 49 33 25 26 20 29 22 32 32 18 29 23 22 20 22 21 20 23 30 25 22 19 19 26 68 29
20 30 52 29 12
Josh 18 24 17 24 15 27 26 35 27 43 23 24 33 15 63 10 18 28 51 9 45 34 16 33
Judg 36 23 31 24 31 40 25 35 57 18 40 15 25 20 20 31 13 31 30 48 25
Ruth 22 23 18 22
1Sam 28 36 21 22 12 21 17 22 27 27 15 25 23 52 35 23 58 30 24 42 15 23 29 22 44 25 12 25 11
31 13
2Sam 27 32 39 12 25 23 29 18 13 19 27 31 39 33 37 23 29 33 43 26 22 51 39 25
1Kgs 53 46 28 34 18 38 51 66 28 29 43 33 34 31 34 34 24 46 21 43 29 53
2Kgs 18 25 27 44 27 33 20 29 37 36 21 21 25 29 38 20 41 37 37 21 26 20 37 20 30
1Chr 54 55 24 43 26 81 40 40 44 14 47 40 14 17 29 43 27 17 19 8 30 19 32 31 31 32 34 21 30
2Chr 17 18 17 22 14 42 22 18 31 19 23 16 22 15 19 14 19 34 11 37 20 12 21 27 28 23 9 27 36
27 21 33 25 33 27 23
Ezra 11 70 13 24 17 22 28 36 15 44
Neh 11 20 32 23 19 19 73 18 38 39 36 47 31
Esth 22 23 15 17 14 14 10 17 32 3
Job 22 13 26 21 27 30 21 22 35 22 20 25 28 22 35 22 16 21 29 29 34 30 17 25 6 14 23 28 25 31
40 22 33 37 16 33 24 41 30 24 34 17
Ps 6 12 8 8 12 10 17 9 20 18 7 8 6 7 5 11 15 50 14 9 13 31 6 10 22 12 14 9 11 12 24 11 22 22
28 12 40 22 13 17 13 11 5 26 17 11 9 14 20 23 19 9 6 7 23 13 11 11 17 12 8 12 11 10 13 20 7
35 36 5 24 20 28 23 10 12 20 72 13 19 16 8 18 12 13 17 7 18 52 17 16 15 5 23 11 13 12 9 9 5
8 28 22 35 45 48 43 13 31 7 10 10 9 8 18 19 2 29 176 7 8 9 4 8 5 6 5 6 8 8 3 18 3 3 21 26 9
8 24 13 10 7 12 15 21 10 20 14 9 6
Prov 33 22 35 27 23 35 27 36 18 32 31 28 25 35 33 33 28 24 29 30 31 29 35 34 28 28 27 28 27
33 31
Eccl 18 26 22 16 20 12 29 17 18 20 10 14
Song 17 17 11 16 16 13 13 14
Isa 31 22 26 6 30 13 25 22 21 34 16 6 22 32 9 14 14 7 25 6 17 25 18 23 12 21 13 29 24 33 9
20 24 17 10 22 38 22 8 31 29 25 28 28 25 13 15 22 26 11 23 15 12 17 13 12 21 14 21 22 11 12
19 12 25 24
Jer 19 37 25 31 31 30 34 22 26 25 23 17 27 22 21 21 27 23 15 18 14 30 40 10 38 24 22 17 32
24 40 44 26 22 19 32 21 28 18 16 18 22 13 30 5 28 7 47 39 46 64 34
Lam 22 22 66 22 22
Ezek 28 10 27 17 17 14 27 18 11 22 25 28 23 23 8 63 24 32 14 49 32 31 49 27 17 21 36 26 21
26 18 32 33 31 15 38 28 23 29 49 26 20 27 31 25 24 23 35
Dan 21 49 30 37 31 28 28 27 27 21 45 13
Hos 11 23 5 19 15 11 16 14 17 15 12 14 16 9
Joel 20 32 21
Amos 15 16 15 13 27 14 17 14 15
Obad 21
Jonah 17 10 10 11
Mic 16 13 12 13 15 16 20
Nah 15 13 19
Hab 17 20 19
Zeph 18 15 20
Hag 15 23
Zech 21 13 10 14 11 15 14 23 17 12 17 14 9 21
Mal 14 17 18 6
Tob 22 14 17 21 22 18 16 21 6 13 18 22 17 15
Jdt 16 28 10 15 24 21 32 36 14 23 23 20 20 19 14 25
EsthGr 22 23 15 17 14 14 10 17 32 13 12 6 18 19 16 24
Wis 16 24 19 20 23 25 30 21 18 21 26 27 19 31 19 29 21 25 22
Sir 30 18 31 31 15 37 36 19 18 31 34 18 26 27 20 30 32 33 30 31 28 27 27 34 26 29 30 26 28
25 31 24 33 31 26 31 31 34 35 30 22 25 33 23 26 20 25 25 16 29 30
Bar 22 35 37 37 9 73
PrAzar 68
Sus 64
Bel 42
1Macc 64 70 60 61 68 63 50 32 73 89 74 53 53 49 41 24
2Macc 36 32 40 50 27 31 42 36 29 38 38 45 26 46 39
1Esd 58 30 24 63 73 34 15 96 55
PrMan 15
AddPs 7
3Macc 29 33 30 21 51 41 23
2Esd 40 48 36 52 56 59 140 63 47 59 46 51 58 48 63 78
4Macc 35 24 21 26 38 35 23 29 32 21 27 19 27 20 32 25 24 24
Matt 25 23 17 25 48 34 29 34 38 42 30 50 58 36 39 28 27 35 30 34 46 46 39 51 46 75 66 20
Mark 45 28 35 41 43 56 37 38 50 52 33 44 37 72 47 20
Luke 80 52 38 44 39 49 50 56 62 42 54 59 35 35 32 31 37 43 48 47 38 71 56 53
John 51 25 36 54 47 71 53 59 41 42 57 50 38 31 27 33 26 40 42 31 25
Acts 26 47 26 37 42 15 60 40 43 48 30 25 52 28 41 40 34 28 41 38 40 30 35 27 27 32 44 31
Rom 32 29 31 25 21 23 25 39 33 21 36 21 14 23 33 27
1Cor 31 16 23 21 13 20 40 13 27 33 34 31 13 40 58 24
2Cor 24 17 18 18 21 18 16 24 15 18 33 21 14
Gal 24 21 29 31 26 18
Eph 23 22 21 32 33 24
Phil 30 30 21 23
Col 29 23 25 18
1Thess 10 20 13 18 28
2Thess 12 17 18
1Tim 20 15 16 16 25 21
2Tim 18 26 17 22
Titus 16 15 15
Phlm 25
Heb 14 18 19 16 14 20 28 13 28 39 40 29 25
Jas 27 26 18 17 20
1Pet 25 25 22 19 14
2Pet 21 22 18
1John 10 29 24 21 21
2John 13
3John 15
Jude 25
Rev 20 29 22 11 14 17 17 13 21 11 19 18 18 20 8 21 18 24 21 15 27 21
"""
N_OT_BOOKS = 56  # Gen..Mal (39) + 17 deuterocanonical books; the NT (27 books) follows.


def nrsva_canon() -> list[tuple[str, list[int]]]:
    """(book, verses per chapter) in SWORD NRSVA order, parsed from the table above."""
    canon: list[tuple[str, list[int]]] = []
    for tok in _NRSVA.split():
        if tok.isdigit():
            canon[-1][1].append(int(tok))
        else:
            canon.append((tok, []))
    return canon


# Elements whose *content* is not verse text: notes (footnotes, cross-references, translators'
# tagging remarks), section headings / Psalm superscriptions / acrostic letters, and the Song of
# Songs speaker labels (WEB only).  Psalm titles sit outside the verse in the KJV file, so
# dropping them in WEB keeps the pair parallel.
_DROP = frozenset({"note", "title", "speaker"})
# Inline word-level wrappers: removed without a space.  Every other tag (l, lg, lb, div,
# milestone, chapter, verse, ...) is a structural break and becomes a space.
_INLINE = frozenset({"w", "transChange", "divineName", "q", "foreign", "seg", "name", "abbr",
                     "hi", "inscription", "rdg", "catchWord", "reference"})
_TOKEN = re.compile(r"<(/?)([A-Za-z]+)\b[^>]*?(/?)>|([^<]+)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)\]’”])")
_BOOK_END = re.compile(r'<div\b(?=[^>]*\beID=)(?=[^>]*\btype="book")[^>]*>')


def _tidy(parts: list[str]) -> str:
    text = html.unescape("".join(parts))
    text = " ".join(text.split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def osis_to_text(osis: str) -> str:
    """Plain text of an OSIS fragment: keep words, drop notes/headings and all tags.

    A dropped note becomes a space because WEB often glues the next word straight after
    ``</note>`` (``God<note>…</note><w>created</w>``), and so does a word that opens right where
    another closed (``priests</w><w>and``); a space left before punctuation is removed.
    """
    parts: list[str] = []
    drop, word_closed = 0, False
    for m in _TOKEN.finditer(osis):
        closing, tag, selfclosing, text = m.groups()
        if text is not None:
            if not drop:
                parts.append(text)
        elif tag in _DROP and not selfclosing:
            drop += -1 if closing else 1
            parts.append(" ")
        elif not drop and (tag not in _INLINE or (tag == "w" and not closing and word_closed)):
            parts.append(" ")
        word_closed = tag == "w" and bool(closing)
    return _tidy(parts)


def _slot_reader(slots: list[tuple], blocks: list[tuple], bzz: bytes) -> Callable[[int], str]:
    """The OSIS text of one verse slot, decompressing each block once."""
    cache: dict[int, bytes] = {}

    def entry(i: int) -> str:
        block, offset, size = slots[i]
        if size == 0:
            return ""
        if block not in cache:
            start, csize, _ = blocks[block]
            cache[block] = zlib.decompress(bzz[start:start + csize])
        text = cache[block][offset:offset + size].decode("utf-8")
        # Matter after a book's closing <div> (WEB's glossary, after Rev 22:21) is not verse.
        end = _BOOK_END.search(text)
        return text[:end.start()] if end else text

    return entry


def read_sword_ztext(module_dir: str | Path) -> dict[Key, str]:
    """Read a SWORD zText Bible module with NRSVA versification (e.g. engWEB2015eb).

    Files per testament (``ot``/``nt``), all little-endian:
      * ``.bzs`` block index, 12 bytes per block: u32 offset in .bzz, u32 compressed size,
        u32 uncompressed size;
      * ``.bzv`` verse index, 10 bytes per slot: u32 block number, u32 offset within the
        *decompressed* block, u16 length (0 = empty slot);
      * ``.bzz`` concatenated zlib streams (CompressType=ZIP), UTF-8 OSIS text.
    Slot order per testament: 0 (unused), 1 testament heading, then per book a book-heading
    slot and per chapter a chapter-heading slot followed by its verses.  Heading slots (book
    introductions, ``<chapter>`` tags) are skipped; empty verse slots are left out.
    """
    module_dir = Path(module_dir)
    canon = nrsva_canon()
    out: dict[Key, str] = {}
    for testament, books in (("ot", canon[:N_OT_BOOKS]), ("nt", canon[N_OT_BOOKS:])):
        bzs = (module_dir / f"{testament}.bzs").read_bytes()
        bzv = (module_dir / f"{testament}.bzv").read_bytes()
        bzz = (module_dir / f"{testament}.bzz").read_bytes()
        blocks = list(struct.iter_unpack("<III", bzs))
        slots = list(struct.iter_unpack("<IIH", bzv))
        expected = 2 + sum(1 + len(ch) + sum(ch) for _, ch in books)
        if len(slots) != expected:
            raise XdrayError(f"{module_dir}/{testament}.bzv has {len(slots)} verse slots where NRSVA needs "
                             f"{expected}: not the engWEB2015eb module this reader knows; {_FIX}")
        entry = _slot_reader(slots, blocks, bzz)
        i = 2
        for book, chapters in books:
            i += 1  # book heading / introduction
            for c, nverses in enumerate(chapters, 1):
                tag = re.search(r'<chapter\b[^>]*osisID="([^"]+)"', entry(i))
                if tag and tag.group(1) != f"{book}.{c}":  # cross-check the canon table
                    raise XdrayError(f"{module_dir}: slot {i} holds {tag.group(1)} where {book}.{c} belongs: "
                                     f"not the engWEB2015eb module this reader knows; {_FIX}")
                i += 1
                for v in range(1, nverses + 1):
                    text = osis_to_text(entry(i))
                    if text:
                        out[(book, c, v)] = text
                    i += 1
    return out


def read_kjv(tree: str | Path) -> dict[Key, str]:
    """Read the KJV from bibledit-data's OSIS file (``tree`` = dpkg -x root, or the .xml).

    Verses are milestones: ``<verse osisID="Gen.1.1" sID="Gen.1.1"/> … <verse eID="Gen.1.1"/>``;
    text outside them (book/chapter titles, Psalm superscriptions, NT colophons) is ignored.
    """
    path = Path(tree)
    if path.is_dir():
        path = path / KJV_XML
    xml = path.read_text(encoding="utf-8")
    out: dict[Key, str] = {}
    for m in re.finditer(r'<verse osisID="([^"]+)" sID="[^"]+"/>(.*?)<verse eID="\1"/>', xml, re.S):
        book, chapter, verse = m.group(1).split(".")
        text = osis_to_text(m.group(2))
        if text:
            out[(book, int(chapter), int(verse))] = text
    return out


def bibles(cache: Path) -> tuple[dict[Key, str], dict[Key, str], dict[str, str]]:
    """The KJV and the WEB by verse, fetched into ``cache`` (kept for reruns), and the packages' versions."""
    (web_tree, web_version), (kjv_tree, kjv_version) = (fetch_deb(p, cache, _FIX) for p in PACKAGES)
    if not (web_tree / WEB_MODULE).is_dir() or not (kjv_tree / KJV_XML).is_file():
        raise XdrayError(f"sword-text-web {web_version} / bibledit-data {kjv_version} lack {WEB_MODULE} or {KJV_XML}; "
                         f"{_FIX}")
    return read_kjv(kjv_tree), read_sword_ztext(web_tree / WEB_MODULE), dict(zip(PACKAGES, (web_version, kjv_version)))
