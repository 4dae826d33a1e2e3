"""GCIDE (the GNU Collaborative International Dictionary of English, Debian ``dict-gcide``, GPL-2+) as clean
English sentences: definitions, quotations and usage notes of every entry. The dictd database is
``usr/share/dictd/gcide.index`` (headword, base-64 offset and length) + ``gcide.dict.dz`` (gzip). Blocks that
GCIDE took from WordNet are dropped: WordNet glosses are a target task's text.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from xdray.data.sentences import clean_sentence_ok, split_sentences
from xdray.errors import XdrayError

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_int(s: str) -> int:
    """Decode dictd's base-64 number (most significant digit first)."""
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def _gcide_files(tree: Path) -> tuple[Path, Path]:
    """Find gcide.index / gcide.dict(.dz) under an unpacked deb or a dictd dir."""
    for d in (tree / "usr/share/dictd", tree):
        idx = d / "gcide.index"
        if idx.exists():
            for name in ("gcide.dict.dz", "gcide.dict"):
                if (d / name).exists():
                    return idx, d / name
    raise XdrayError(f"no gcide.index + gcide.dict[.dz] under {tree}; fix: delete {tree} so that dict-gcide is "
                     "fetched again")


def gcide_entries(tree: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(headword, entry_text)`` once per distinct dictd entry, in file order.

    A ``.dict.dz`` is a gzip stream (dictzip only adds a random-access table
    in the gzip header), so ``gzip`` reads it whole (~40 MB, < 1 s).  The
    index maps headword -> (offset, length) in base 64; several headwords
    (inflections) point at the same entry, so entries are deduped by
    offset.  The ``00-database-*`` pseudo entries are skipped.
    """
    idx, dic = _gcide_files(tree)
    opener = gzip.open if dic.suffix == ".dz" else open
    with opener(dic, "rb") as f:
        data = f.read()
    seen: dict[tuple[int, int], str] = {}
    with open(idx, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0].startswith("00-"):
                continue
            key = (_b64_int(parts[1]), _b64_int(parts[2]))
            seen.setdefault(key, parts[0])
    for (off, length), head in sorted(seen.items()):
        yield head, data[off : off + length].decode("utf-8", errors="replace")


# GCIDE's ASCII escapes for non-ASCII letters, e.g. ['e] -> e-acute.
_COMBINING = {"'": "\u0301", "`": "\u0300", '"': "\u0308", "^": "\u0302", "~": "\u0303",
              ",": "\u0327", "=": "\u0304", ".": "\u0323", "-": "\u0304", "*": ""}
_NAMED = {
    "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "ng": "ŋ",
    "yogh": "ȝ", "imac": "ī", "th": "th", "root": "√", "deg": "°", "sect": "§",
    "pounds": "£", "times": "×", "divby": "÷", "div": "÷", "dagger": "†", "dag": "†",
    "para": "¶", "middot": "·", "nbsp": " ", "ldqo": "“", "rdqo": "”", "rsquo": "’",
    "flat": "♭", "sharp": "♯", "prime": "′", "bprime": "″", "min": "′", "sec": "″",
    "rarr": "→", "hand": "☞", "schwa": "ə", "ait": "a", "asl": "a", "add": "a",
    "aum": "a", "udd": "u", "cre": "‿", "filig": "fi", "fllig": "fl", "ffllig": "ffl",
    "frac12": "½", "frac14": "¼", "frac34": "¾", "frac13": "⅓", "frac23": "⅔",
}
for _g in ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
           "omicron pi rho sigma tau upsilon phi chi psi omega").split():
    _u = "LAMDA" if _g == "lambda" else _g.upper()  # Unicode spells it LAMDA
    _NAMED[_g] = unicodedata.lookup(f"GREEK SMALL LETTER {_u}")
    _NAMED[_g.capitalize()] = unicodedata.lookup(f"GREEK CAPITAL LETTER {_u}")
_NAMED["sigmat"] = "ς"

_CODE = re.compile(r"\[([^\[\]\s]{1,7})\]")
_BAD = "\x00"  # marks an unknown escape inside a word; such sentences are dropped


def _gcide_char(m: re.Match[str]) -> str:
    """Replace one GCIDE bracket escape by Unicode; leave real brackets alone."""
    code = m.group(1)
    if code in _NAMED:
        return _NAMED[code]
    if len(code) == 2 and code[0] in _COMBINING and code[1].isalpha():
        return unicodedata.normalize("NFC", code[1] + _COMBINING[code[0]])
    if len(code) == 2 and code[1] == "^" and code[0].isalpha():  # breve
        return unicodedata.normalize("NFC", code[0] + "\u0306")
    if code in ("=oo", "oo^"):
        return "oo"
    # Unknown code glued to a letter (e.g. "Pal[ae" fragments): poison.
    s, e = m.start(), m.end()
    txt = m.string
    glued = (s > 0 and txt[s - 1].isalpha()) or (e < len(txt) and txt[e].isalpha())
    return _BAD if glued and not code.endswith(".") else m.group(0)


# A line holding only a source tag: "[1913 Webster]", "[WordNet 1.5 +PJC]" ...
_TAG_WORDS = re.compile(
    r"(?:1913|Webster|Suppl\.?|Word[Nn]et|sense|PJC\.?|AS|RDH|Century|Dict\.?|Dictionary|"
    r"RP|GG|JG|CM|MW10|RHUD|JC|PC|#here|\d+(?:\.\d+)?|[+&,.])"
)
_TAG_LINE = re.compile(r"^\s*\[([^\[\]]+)\]")  # rarely junk follows on the line

# Bracket labels removed (usage/region notes); other short bracketed words in
# quotations are editorial insertions like "[He]" and are unwrapped instead.
_LABELS = frozenset(
    """obs r rare colloq archaic slang prov eng scot poetic poet cant low vulgar
    informal prenominal fig jocose local recent india canada china france turkey
    texas alaska irish scotch modern japan italy poland london russia egypt law
    break sic brit amer australia us derog humorous dial dialect""".split()
)
_INNER_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_PRON = re.compile(r"\\[^\\]{0,160}\\")  # \\A*ban"don\\, may wrap a line
_SYLLABIFIED = re.compile(r"\{[^{}]*[*\"`][^{}]*\}")  # {Ab*surd"ly} run-on forms
_BRACES = re.compile(r"[{}]")
_ATTRIBUTION = re.compile(r"\s--(?=[A-Z0-9(\[])[\s\S]*$")  # "--Shak." to item end
_SENSE = re.compile(r"^(?:\s*(?:\d+\.|\([a-z]\)|\([ivx]+\))\s+)+")
_DOMAIN = re.compile(r"^\((?=[^)]*(?:\.|^[A-Z]))[^()]{1,40}\)\s+")
# "(pron), v. t." residue left before the first definition of an entry.
_HEADER_RESIDUE = re.compile(r"^(?:\s+|\([^()]*\)|[,;:&]|or\b|and\b|[a-z]{1,7}\.)*")
_INLINE_DOMAIN = re.compile(r"\s\((?:[A-Z][\w\u00c0-\u024f]*\.?\s?&?\s?){1,3}\)(?=[\s,;:.])")
_ELLIPSIS = re.compile(r"\s*\.(?:\s*\.){2,3}")
_INLINE_SENSE = re.compile(r"(?<=[.;:])\s+(?:\d{1,2}\.\s+)?(?:\([a-z]\)|\d{1,2}\.)\s+(?=[A-Z(])")
_RUNON_EMPTY = re.compile(r"\s--\s*[,;]?\s*(?:(?:[a-z]{1,7}\.|or|&)\s*)*(?=\s--|$)")
_RUNON_POS = re.compile(r"\s--\s*[,;]?\s*(?:[a-z]{1,7}\.\s*)+(?=[A-Z])")
_ITEM_PREFIX = re.compile(r"^\s*(?:Note|Usage|Syn|Ant|Examples?)\s*[:.]\s*(?:--\s*)?")


def _drop_bracket(m: re.Match[str]) -> str:
    inner = m.group(1).strip()
    words = inner.split()
    if (
        0 < len(words) <= 4
        and all(w.isalpha() or w.replace("'", "").isalpha() for w in words)
        and inner.lower() not in _LABELS
        and not inner.endswith(".")
    ):
        return inner  # editorial insertion inside a quotation
    return " "


def _strip_brackets(s: str) -> str:
    """Remove balanced [...] groups (etymologies, labels), innermost first."""
    while True:
        t = _INNER_BRACKET.sub(_drop_bracket, s)
        if t == s:
            return t
        s = t


def _is_source_tag(line: str) -> tuple[bool, bool]:
    """(is a source tag line, names WordNet)."""
    m = _TAG_LINE.match(line)
    if not m:
        return False, False
    inner = m.group(1)
    if _TAG_WORDS.sub("", inner).strip():
        return False, False
    return True, "wordnet" in inner.lower()


class GcideItem(NamedTuple):
    """One cleaned paragraph of an entry: kind is 'def', 'quote' or 'note'."""

    headword: str
    kind: str
    text: str


def gcide_items(tree: Path, keep_wordnet: bool = False) -> Iterator[GcideItem]:
    """Yield cleaned paragraphs (definitions, quotations, notes) of every entry.

    Why this shape: an entry is a run of *blocks*, each closed by a source
    tag line (``[1913 Webster]``, ``[WordNet 1.5]``, ``[PJC]`` ...); within a
    block, blank lines separate a definition from its quotations.  Blocks
    tagged WordNet are dropped by default because WordNet glosses are a
    target task's text and must stay out of a transfer corpus.

    Cleaning: escapes -> Unicode; the header (headword, ``\\pron\\``,
    ``(pron)``, part of speech, ``[etymology]``) is cut; every balanced
    ``[...]`` is removed (``[Obs.]``, ``[R.]``), except short editorial
    words inside quotes (``[He]``) which are unwrapped; ``{x}`` cross-refs
    keep their text; run-on forms like ``{Ab*surd"ly}`` are removed; sense
    numbers ``1.``/``(a)`` and leading domain labels ``(Mar. Law)`` are
    cut; ``--Author.`` attributions are cut to the end of the paragraph;
    ``Syn:`` word lists are skipped; ``Note:``/``Usage:`` prefixes dropped.
    """
    for head, entry in gcide_entries(tree):
        entry = _CODE.sub(_gcide_char, entry)
        blocks: list[tuple[list[str], bool]] = []
        cur: list[str] = []
        for line in entry.split("\n"):
            is_tag, wn = _is_source_tag(line)
            if is_tag:
                blocks.append((cur, wn))
                cur = []
            else:
                cur.append(line)
        if any(x.strip() for x in cur):
            blocks.append((cur, False))
        first = True
        for lines, wn in blocks:
            raw = "\n".join(lines)
            if first:
                raw = _strip_header(raw)
                first = False
            if wn and not keep_wordnet:
                continue
            raw = _PRON.sub(" ", _strip_brackets(raw))
            paras: list[str] = []
            for para in re.split(r"\n\s*\n", raw):
                if not para.strip():
                    continue
                # GCIDE sometimes breaks one note over blank lines before a
                # "{term}": glue a paragraph that does not end a sentence to
                # a following one that starts with "{" or a lower-case word.
                nxt = para.lstrip()
                if paras and not re.search(r"[.!?:;\"')]\s*$", paras[-1]) and (nxt[:1] == "{" or nxt[:1].islower()):
                    paras[-1] += " " + nxt
                else:
                    paras.append(para.strip("\n"))
            for para in paras:
                first_line = para.lstrip("\n").split("\n", 1)[0]
                kind = "quote" if len(first_line) - len(first_line.lstrip(" ")) >= 9 else "def"
                m = _ITEM_PREFIX.match(para)
                if m:
                    label = para[: m.end()].strip().lower()
                    if label.startswith(("syn", "ant")):
                        continue
                    kind = "note"
                    para = para[m.end():]
                text = _clean_paragraph(para)
                if text:
                    yield GcideItem(head, kind, text)


def _strip_header(raw: str) -> str:
    """Cut the entry header: headword, ``\\pron\\`` (several for variant
    headwords, maybe over two lines), ``[etymology]`` and the ``(pron), pos.``
    residue before the first definition.

    About 24 index entries start mid-article (a blank line, a ``[1913
    Webster]`` tag, or a table row): those have no header and are kept.
    """
    if not raw[:1].strip():
        return raw
    raw = _strip_brackets(raw)
    first = _PRON.search(raw)
    if not first or raw.count("\n", 0, first.start()) > 2:
        return raw
    end = first.end()
    # Extend over following header lines that also carry a pronunciation.
    for m in _PRON.finditer(raw, end):
        between = raw[end : m.start()]
        if between.count("\n") > 1 or re.search(r"\n\s*(?:\d+\.|\([a-z]\))", between):
            break
        end = m.end()
    return _HEADER_RESIDUE.sub("", raw[end:], count=1)


def _clean_paragraph(para: str) -> str:
    """Turn one GCIDE paragraph into plain prose (see :func:`gcide_items`)."""
    para = _ATTRIBUTION.sub("", para)
    para = _ELLIPSIS.sub(" \u2026 ", para)
    para = _SYLLABIFIED.sub(" ", para)
    para = _BRACES.sub("", para)
    para = " ".join(para.split())
    para = _SENSE.sub("", para)
    para = _DOMAIN.sub("", para)
    para = _SENSE.sub("", para)
    para = _INLINE_DOMAIN.sub("", para)
    para = _INLINE_SENSE.sub(" ", para)
    para = _RUNON_EMPTY.sub("", para)  # "-- , adv." left by a removed run-on form
    para = _RUNON_POS.sub(". ", para)  # "-- n. A drug ..." starts a new sentence
    para = re.sub(r"\s+([,;:.!?])", r"\1", para)
    para = re.sub(r"([.!?])[.,;]+", r"\1", para)
    para = para.replace(" -- ", " — ").replace("; — ", "; ")
    return para.strip(" ,;")


def gcide_sentences(tree: Path, keep_wordnet: bool = False,
                    min_words: int = 5, max_words: int = 60) -> Iterator[str]:
    """Yield clean English sentences from GCIDE (not deduplicated).

    Definitions, quotations and usage notes are split with
    :func:`split_sentences` and filtered with :func:`clean_sentence_ok`.
    Definitions are often phrase-like ("To cast or drive out; to banish.")
    rather than full clauses; quotations are literary (Shakespeare, Milton...).
    """
    for item in gcide_items(tree, keep_wordnet=keep_wordnet):
        for s in split_sentences(item.text):
            if clean_sentence_ok(s, min_words, max_words):
                yield s
