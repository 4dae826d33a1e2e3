"""Extractive question answering: contexts longer than the window are split into overlapping windows, each
window gets the answer's token span for training (or [CLS] when the answer is not inside it), and answers are
extracted back out of the windows' start/end logits, then scored with the SQuAD metric (torchmetrics' port of
the official script: exact match and token F1 after lower-casing and dropping punctuation and articles).
Plain tokenizers and torch; no Ray."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase


@dataclass
class Windows:
    """The windows of a batch of (question, context) examples, in order."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    example: list[int]
    """The example each window comes from."""
    offsets: list[list[tuple[int, int] | None]]
    """Character span in the context of each token; None for question, special and padding tokens."""
    start_positions: list[int] | None = None
    end_positions: list[int] | None = None


def qa_windows(tokenizer: PreTrainedTokenizerBase, questions: Sequence[str], contexts: Sequence[str],
               max_length: int, stride: int, answers: Sequence[tuple[int, str] | None] | None = None) -> Windows:
    """Question + context windows of at most ``max_length`` tokens, overlapping by ``stride`` context tokens.
    ``answers``: (character start, text) per example, None for an unanswerable one (SQuAD v2); with them each
    window gets the answer's first and last token, or (0, 0) when the answer is not wholly inside it."""
    if not tokenizer.is_fast:
        raise ValueError("question answering needs a fast tokenizer (offsets); save the model with a tokenizer.json")
    enc = tokenizer(list(questions), list(contexts), truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    example = list(enc["overflow_to_sample_mapping"])
    offsets = []
    for i in range(len(example)):
        sequence = enc.sequence_ids(i)
        offsets.append([tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], sequence)])
    windows = Windows(enc["input_ids"], enc.get("token_type_ids"), example, offsets)
    if answers is not None:
        windows.start_positions, windows.end_positions = [], []
        for i, ex in enumerate(example):
            span = _token_span(offsets[i], answers[ex])
            windows.start_positions.append(span[0])
            windows.end_positions.append(span[1])
    return windows


def _token_span(offsets: list[tuple[int, int] | None], answer: tuple[int, str] | None) -> tuple[int, int]:
    if answer is None:
        return 0, 0
    first, last = answer[0], answer[0] + len(answer[1])
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > first or offsets[inside[-1]][1] < last:
        return 0, 0
    start = next(i for i in inside if offsets[i][1] > first)
    end = next(i for i in reversed(inside) if offsets[i][0] < last)
    return start, end


def extract_answers(windows: Windows, start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray],
                    contexts: Sequence[str], max_answer_tokens: int = 30, n_best: int = 20,
                    allow_null: bool = False) -> list[str]:
    """The best-scoring answer text of each example over all its windows: the span s ≤ e < s + ``max_answer_tokens``
    of context tokens maximising start[s] + end[e], among each window's ``n_best`` starts and ends. With
    ``allow_null`` (SQuAD v2) the empty answer wins when its score, start[0] + end[0] at [CLS] (the lowest over
    the example's windows), beats the best span."""
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for w, ex in enumerate(windows.example):
        start, end, offsets = np.asarray(start_logits[w]), np.asarray(end_logits[w]), windows.offsets[w]
        n = len(offsets)
        start, end = start[:n], end[:n]
        null[ex] = min(null.get(ex, np.inf), float(start[0] + end[0]))
        for s in np.argsort(-start)[:n_best]:
            for e in np.argsort(-end)[:n_best]:
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_tokens:
                    continue
                score = float(start[s] + end[e])
                if ex not in best or score > best[ex][0]:
                    best[ex] = (score, contexts[ex][offsets[s][0]:offsets[e][1]])
    answers = []
    for ex in range(len(contexts)):
        score, text = best.get(ex, (-np.inf, ""))
        answers.append("" if allow_null and null.get(ex, -np.inf) > score else text)
    return answers


def squad_metrics(predictions: Sequence[str], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 (as fractions; ``score`` is F1) of each prediction against the best of its gold answers;
    an unanswerable example has no gold answers and is right only when the prediction is empty."""
    from torchmetrics.functional.text import squad

    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [{"answers": {"text": list(g) or [""], "answer_start": [0] * max(len(g), 1)}, "id": str(i)}
              for i, g in enumerate(gold)]
    scores = squad(preds, target)
    em, f1 = float(scores["exact_match"]) / 100, float(scores["f1"]) / 100
    return {"score": f1, "f1": f1, "exact_match": em}
