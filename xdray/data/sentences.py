"""Sentences for transfer corpora: syntok (a rule-based segmenter that knows abbreviations, initials and
ellipses) splits prose, a filter keeps clean sentences of 5-60 words, and one key compares sentences across
sources and against held-out task text."""

from __future__ import annotations

import re

from syntok.segmenter import preprocess, segment
from syntok.tokenizer import Tokenizer

_TOKENIZER = Tokenizer(replace_not_contraction=False)  # syntok's default spells "don't" as "do not"


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (paragraphs split on blank lines first), whitespace normalised."""
    return [" ".join("".join(t.spacing + t.value for t in sentence).split())
            for paragraph in preprocess(text) for sentence in segment(_TOKENIZER.tokenize(paragraph))]


def sentence_key(text: str) -> str:
    """Case and spacing ignored: a tokenized held-out sentence ("growing .") matches its prose ("growing.")."""
    return "".join(text.lower().split())


_JUNK = re.compile(
    r"[\\{}\[\]|<>_#@=*~^\x00]|\?\s|\s\?|\.\s*\.\s*\.|https?:|www\.|\w\.(?:com|net|org|htm|html)\b|\d{3,}[-.]\d{3,}"
)


def clean_sentence_ok(s: str, min_words: int = 5, max_words: int = 60) -> bool:
    """Filter for corpus sentences: 5-60 words, ends with . ! or ? (so
    fragments and headings go), no markup remnants (brackets, braces,
    backslashes, ``<>|_#@=*~^``, stray ``?``, ``...``, URLs, phone-like
    digit runs), >= 60% letters, not mostly upper case, and at least one
    lower-case word of 3+ letters."""
    n = len(s.split())
    if not (min_words <= n <= max_words):
        return False
    if _JUNK.search(s):
        return False
    if not re.search(r"[.!?][\"'\u201d\u2019)]*$", s):  # fragments, headings, list items
        return False
    letters = sum(map(str.isalpha, s))
    if letters < 0.6 * len(s.replace(" ", "")):
        return False
    upper = sum(map(str.isupper, s))
    if upper > 0.5 * letters:  # SHOUTED spam lines
        return False
    return bool(re.search(r"\b[a-z]{3,}\b", s))
