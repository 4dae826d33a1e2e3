"""`xdray data transfer-sets`: two real target tasks for the transfer benchmark, as TSV splits (``text``, ``label``).

- ``wordnet_verbs``: WordNet 3.0 verb supersenses, 15 classes. text = a verb synset's definition (gloss without
  its examples), label = the lexicographer file name (``verb.motion``...), names not ids: the transfer step maps
  them. Source: ``data.verb`` from Debian's ``wordnet-base`` package (``apt-get download``, no root needed).
- ``vader_tweets``: regression, text = tweet, label = mean human rating; the tweets domain of the VADER ground
  truth in the ``vaderSentiment==3.3.2`` sdist (read by ``xdray.data.samples``), all rows.

Both split 80/10/10 after a shuffle with a fixed seed. Idempotent: MANIFEST.json is written last.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from xdray.common.files import write_json
from xdray.data.debian import fetch_deb
from xdray.data.samples import VADER_SDIST, _read_ground_truth, _vader_sdist
from xdray.data.tables import write_atomic_tsv
from xdray.errors import XdrayError

SPLIT_SEED = 13
SPLITS = ("train", "dev", "test")
DEBIAN_PACKAGE = "wordnet-base"
VERB_LEXNAMES = {
    29 + i: f"verb.{name}"
    for i, name in enumerate(
        "body change cognition communication competition consumption contact creation emotion motion "
        "perception possession social stative weather".split()
    )
}
_EXAMPLE = re.compile(r'(?:^|[;:,])\s*"')  # examples follow `; "`; a few glosses use `:"`, `, "` or `;"`
_TAIL = re.compile(r"(?:[\s;:,]+e\.g\.)?[\s;:,]*$")  # a trailing separator, or a dangling ", e.g."
_HELP = ("fix: get wordnet-base_*.deb from packages.debian.org (or WordNet-3.0.tar.gz from wordnet.princeton.edu), "
         "extract data.verb and pass it with --data-verb PATH")


def prepare_transfer_sets(out: Path, data_verb: Path | None = None) -> dict:
    """Create (or confirm) both tasks under ``out``; returns the manifest."""
    manifest_path = out / "MANIFEST.json"
    if manifest_path.is_file():
        return json.loads(manifest_path.read_text())
    manifest = {
        "seed": SPLIT_SEED,
        "wordnet_verbs": prepare_wordnet_verbs(out, data_verb),
        "vader_tweets": prepare_vader_tweets(out),
    }
    write_json(manifest_path, manifest)
    return manifest


def prepare_wordnet_verbs(out: Path, data_verb: Path | None = None) -> dict:
    """Write ``out/wordnet_verbs/{train,dev,test}.tsv``; returns this task's manifest entry."""
    if data_verb is None:
        data_verb, source = _fetch_data_verb(out / ".cache")
    else:
        if not data_verb.is_file():
            raise XdrayError(f"--data-verb: not found: {data_verb}; fix: give the path of WordNet 3.0's data.verb")
        source = f"{data_verb} (given)"
    with open(data_verb, encoding="utf-8", errors="replace") as f:
        rows = parse_data_verb(f)
    splits = _write_splits(out / "wordnet_verbs", rows, str)
    return {
        "task": "15-class verb supersense classification; label = WordNet lexicographer file name",
        "source": source,
        "rows": {name: len(split) for name, split in splits.items()},
        "class_counts": {name: dict(sorted(Counter(y for _, y in split).items())) for name, split in splits.items()},
        "files": {name: f"wordnet_verbs/{name}.tsv" for name in SPLITS},
    }


def prepare_vader_tweets(out: Path) -> dict:
    """Write ``out/vader_tweets/{train,dev,test}.tsv``; returns this task's manifest entry."""
    rows = _read_ground_truth(_vader_sdist(out / ".cache"))["tweets"]
    splits = _write_splits(out / "vader_tweets", rows, repr)
    ratings = [y for _, y in rows]
    return {
        "task": "regression; label = mean human sentiment rating (-4..4), all rows",
        "source": f"{VADER_SDIST} sdist (hutto_ICWSM_2014 tweets_GroundTruth.txt)",
        "rows": {name: len(split) for name, split in splits.items()},
        "label_range": [min(ratings), max(ratings)],
        "files": {name: f"vader_tweets/{name}.tsv" for name in SPLITS},
    }


def parse_data_verb(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(definition, lexname) per verb synset, in file order: license lines (two leading spaces) skipped, empty
    definitions dropped, and a definition kept once, with the label of its first occurrence."""
    rows: dict[str, str] = {}
    for lineno, line in enumerate(lines, start=1):
        if line.startswith("  ") or not line.strip():
            continue
        head, sep, gloss = line.partition(" | ")
        fields = head.split()
        try:
            if not sep:
                raise ValueError
            lex_filenum, p_cnt_at = int(fields[1]), 4 + 2 * int(fields[3], 16)
            int(fields[p_cnt_at])  # p_cnt follows the words: a misread w_cnt ends here
        except (ValueError, IndexError):
            raise XdrayError(
                f"data.verb line {lineno}: not a WordNet synset line ({line[:40].strip()!r}...); "
                "fix: pass WordNet 3.0's data.verb file unchanged"
            ) from None
        if fields[2] != "v" or lex_filenum not in VERB_LEXNAMES:
            raise XdrayError(
                f"data.verb line {lineno}: ss_type {fields[2]}, lex_filenum {fields[1]} is not a verb synset "
                "(v, 29..43); fix: pass WordNet 3.0's data.verb, not another data.* file"
            )
        text = _definition(gloss)
        if text and text not in rows:
            rows[text] = VERB_LEXNAMES[lex_filenum]
    return list(rows.items())


def _definition(gloss: str) -> str:
    match = _EXAMPLE.search(gloss)
    text = gloss[: match.start()] if match else gloss
    if text.count('"') % 2:  # an example missing its opening quote: `close in; darkness enclosed him"`
        quote = text.index('"')
        cut = text.rfind(";", 0, quote)
        text = text[: cut if cut >= 0 else quote]
    return " ".join(_TAIL.sub("", text).split())


def split_rows(rows: list, seed: int = SPLIT_SEED) -> dict[str, list]:
    """Fixed-seed shuffle, then 80/10/10 train/dev/test (``rows`` is left as it is)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n = len(rows)
    return {"train": rows[: int(0.8 * n)], "dev": rows[int(0.8 * n): int(0.9 * n)], "test": rows[int(0.9 * n):]}


def _write_splits(directory: Path, rows: list[tuple[str, object]], fmt: Callable[[object], str]) -> dict[str, list]:
    splits = split_rows(rows)
    for name, split in splits.items():
        rows_out = [{"text": text, "label": fmt(label)} for text, label in split]
        write_atomic_tsv(directory / f"{name}.tsv", ["text", "label"], rows_out)
    return splits


def _fetch_data_verb(cache: Path) -> tuple[Path, str]:
    """``data.verb`` out of Debian's ``wordnet-base``, and where it came from."""
    tree, version = fetch_deb(DEBIAN_PACKAGE, cache, _HELP)
    found = sorted(tree.rglob("data.verb"))
    if not found:
        raise XdrayError(f"{DEBIAN_PACKAGE} {version} holds no data.verb; {_HELP}")
    return found[0], f"Debian {DEBIAN_PACKAGE} {version} ({found[0].relative_to(tree)})"
