"""Sentence pairs from a one-sentence-a-line corpus, for a pair source task (paraphrase, NLI) to label: a teacher
trained on pairs says little about a lone sentence, so its corpus rows must be pairs too. Each anchor (a
fixed-seed sample) is paired with its nearest other sentence of the whole corpus by TF-IDF cosine, a lexical
stand-in for SentAugment's embedding retrieval: near-paraphrases (the same verse in two Bibles), topical
neighbours and loose matches, so the teacher's pair logits range from sure to unsure. The corpus is already
leakage-guarded, so its pairs are too."""

from __future__ import annotations

import random
import statistics

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from xdray.errors import XdrayError

CHUNK = 256  # anchors scored at once: one sparse (CHUNK x corpus) similarity block in memory


def nearest_pairs(sentences: list[str], rows: int | None, seed: int) -> tuple[list[tuple[str, str]], dict]:
    """Up to ``rows`` (anchor, neighbour) pairs (None: every sentence an anchor) and their similarity figures.
    Anchors with no content word in common with any other sentence are skipped (the next sampled anchor takes
    their place)."""
    rows = len(sentences) if rows is None else rows
    # terms in over 5% of sentences (or in one only) find no neighbour worth having and make the blocks dense
    vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english", min_df=2,
                                 max_df=max(2, len(sentences) // 20), dtype=np.float32)
    try:
        matrix = vectorizer.fit_transform(sentences)
    except ValueError:  # sklearn: no term is left
        raise XdrayError(f"cannot pair the corpus's {len(sentences)} sentences: no content word is shared by two of "
                         "them; fix: build pairs from a larger corpus") from None
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    pairs: list[tuple[str, str]] = []
    similarity: list[float] = []
    for start in range(0, len(order), CHUNK):
        anchors = np.asarray(order[start:start + CHUNK])
        block = (matrix[anchors] @ matrix.T).tolil()
        block[np.arange(len(anchors)), anchors] = 0.0  # not itself
        block = block.tocsr()
        best = np.asarray(block.argmax(axis=1)).ravel()
        scores = block[np.arange(len(anchors)), best].A1
        for anchor, neighbour, score in zip(anchors, best, scores, strict=True):
            if score > 0.0 and len(pairs) < rows:
                pairs.append((sentences[anchor], sentences[neighbour]))
                similarity.append(float(score))
        if len(pairs) >= rows:
            break
    stats = {"rows": len(pairs), "seed": seed, "method": "nearest TF-IDF cosine neighbour in the whole corpus",
             "similarity": {"mean": round(statistics.fmean(similarity), 4) if similarity else None,
                            "median": round(statistics.median(similarity), 4) if similarity else None,
                            "over_0.5": sum(s > 0.5 for s in similarity)}}
    return pairs, stats
