"""`xdray data paraphrase`: do two Bible verses say the same thing? A sentence-pair task from two public-domain
English translations (KJV 1769 and the World English Bible; see ``xdray.data.bible``).

Each verse found in both (31,095) gives one row, ``text`` = the KJV verse and ``text_pair`` = either the WEB's
translation of the same verse (label 1) or, with the same probability, the WEB's translation of a neighbouring
verse of the same chapter (label 0: a hard negative, same names, topic and style). Verses that read the same in
both translations and pairs whose lengths differ more than 3-fold (a verse the WEB moved, e.g. Romans 14:23,
which carries 16:25-27) are dropped. Chapters, not verses, split 80/10/10 with a fixed seed, so a verse and its
neighbours never straddle two splits. Idempotent: MANIFEST.json is written last.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from xdray.common.files import write_json
from xdray.data.bible import Key, bibles
from xdray.data.tables import write_atomic_tsv

SEED = 17
MAX_LENGTH_RATIO = 3.0
NEIGHBOURS = (-2, -1, 1, 2)
LABELS = ("neighbour", "same_verse")


def build_pairs(kjv: dict[Key, str], web: dict[Key, str], seed: int = SEED) -> tuple[dict[str, list[dict]], Counter]:
    """The splits' rows, and what was dropped and why."""
    dropped: Counter = Counter()
    keys = []
    for key, text in web.items():
        if key not in kjv:
            continue
        a, b = len(kjv[key].split()), len(text.split())
        if kjv[key] == text:
            dropped["same_text"] += 1
        elif max(a, b) > MAX_LENGTH_RATIO * min(a, b):
            dropped["length_ratio"] += 1
        else:
            keys.append(key)
    kept = set(keys)
    rng = random.Random(seed)
    chapters = sorted({k[:2] for k in keys})
    rng.shuffle(chapters)
    n = len(chapters)
    split_of = {c: "train" if i < 0.8 * n else "dev" if i < 0.9 * n else "test" for i, c in enumerate(chapters)}
    splits: dict[str, list[dict]] = defaultdict(list)
    for key in keys:
        book, chapter, verse = key
        others = [(book, chapter, verse + d) for d in NEIGHBOURS if (book, chapter, verse + d) in kept]
        positive = not others or rng.random() < 0.5
        pair = web[key] if positive else web[rng.choice(others)]
        splits[split_of[key[:2]]].append({"text": kjv[key], "text_pair": pair, "label": int(positive)})
    return dict(splits), dropped


def prepare_paraphrase(out: Path) -> dict:
    """Create (or confirm) the task under ``out``; returns the manifest."""
    manifest_path = out / "MANIFEST.json"
    if manifest_path.is_file():
        return json.loads(manifest_path.read_text())
    kjv, web, sources = bibles(out / ".cache")
    splits, dropped = build_pairs(kjv, web)
    for name, rows in splits.items():
        write_atomic_tsv(out / "bible" / f"{name}.tsv", ["text", "text_pair", "label"], rows)
    manifest = {
        "task": "bible: is text_pair (WEB) a translation of text (KJV)? 1 = the same verse, 0 = a neighbouring verse",
        "labels": list(LABELS),
        "rows": {name: len(rows) for name, rows in splits.items()},
        "class_counts": {name: dict(Counter(LABELS[r["label"]] for r in rows)) for name, rows in splits.items()},
        "verses": {"kjv": len(kjv), "web": len(web)}, "dropped": dict(dropped), "sources": sources,
        "licences": "KJV 1769: public domain (Crown patent in the UK); World English Bible: public domain "
                    "(the name is a trademark of eBible.org: a changed text may not be called the WEB)",
        "files": {split: f"bible/{split}.tsv" for split in ("train", "dev", "test")},
    }
    write_json(manifest_path, manifest)
    return manifest
