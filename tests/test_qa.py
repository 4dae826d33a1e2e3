"""Extractive QA pieces against hand-computed values: windows over a long context and the answer's token span in
each, answers extracted across windows (length limit, order, the null answer), and exact match / F1."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from xdray.transfer.qa import extract_answers, qa_windows, squad_metrics

from .conftest import build_tiny_backbone

FILLER = "the film had a long plot and the cast was there for the story"
CONTEXT = f"{FILLER} . {FILLER} . the ending was written by anna maria lopez in paris . {FILLER} . {FILLER} ."
QUESTION = "who wrote the ending"
ANSWER = "anna maria lopez"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    words = sorted(set(CONTEXT.split() + QUESTION.split()))
    return AutoTokenizer.from_pretrained(build_tiny_backbone(tmp_path_factory.mktemp("qa"), [CONTEXT, QUESTION] + words))


def windows_of(tokenizer, answers=((CONTEXT.index(ANSWER), ANSWER),)):
    return qa_windows(tokenizer, [QUESTION], [CONTEXT], max_length=32, stride=8, answers=list(answers))


def test_long_contexts_become_overlapping_windows_with_the_answer_span_in_each(tokenizer):
    w = windows_of(tokenizer)
    assert len(w.input_ids) >= 3 and set(w.example) == {0} and all(len(ids) <= 32 for ids in w.input_ids)
    holding = [i for i, s in enumerate(w.start_positions) if s]
    assert holding and len(holding) < len(w.input_ids)  # some windows lack the answer: they point at [CLS]
    for i in holding:
        s, e = w.start_positions[i], w.end_positions[i]
        assert CONTEXT[w.offsets[i][s][0]:w.offsets[i][e][1]] == ANSWER
    for i in set(range(len(w.input_ids))) - set(holding):
        assert (w.start_positions[i], w.end_positions[i]) == (0, 0)
    spans = [[o for o in offsets if o] for offsets in w.offsets]  # consecutive windows share context tokens
    assert all(a[-1][1] > b[0][0] for a, b in zip(spans, spans[1:]))
    none = qa_windows(tokenizer, [QUESTION], [CONTEXT], 32, 8, answers=[None])  # unanswerable: [CLS] everywhere
    assert set(none.start_positions) == {0} and set(none.end_positions) == {0}


def logits_for(w, spans: dict[int, list[tuple[int, int, float]]]):
    """Start/end logits of -1 everywhere but the given (window, start, end, value) spans."""
    starts = [np.full(len(ids), -1.0, np.float32) for ids in w.input_ids]
    ends = [x.copy() for x in starts]
    for window, marks in spans.items():
        for s, e, value in marks:
            starts[window][s] = max(starts[window][s], value)
            ends[window][e] = max(ends[window][e], value)
    return starts, ends


def test_the_best_span_over_all_windows_wins_within_the_length_limit(tokenizer):
    w = windows_of(tokenizer)
    right = next(i for i, s in enumerate(w.start_positions) if s)
    other = next(i for i, s in enumerate(w.start_positions) if not s)
    first_context = next(j for j, o in enumerate(w.offsets[other]) if o)
    s, e = w.start_positions[right], w.end_positions[right]
    starts, ends = logits_for(w, {right: [(s, e, 5.0)], other: [(first_context, first_context + 1, 4.0)]})
    assert extract_answers(w, starts, ends, [CONTEXT]) == [ANSWER]
    assert extract_answers(w, starts, ends, [CONTEXT], max_answer_tokens=e - s) != [ANSWER]  # too long now
    # an end before its start is never a span: the best start with the best end behind it
    starts, ends = logits_for(w, {right: [(e, e, 9.0), (s, s, 1.0)]})
    ends[right][s] = 9.0
    last = w.offsets[right][e]  # (start e, end s) scores 18 but runs backwards; (e, e) scores 18 and is a span
    assert extract_answers(w, starts, ends, [CONTEXT]) == [CONTEXT[last[0]:last[1]]]


def test_the_null_answer_wins_only_when_allowed_and_better(tokenizer):
    w = windows_of(tokenizer)
    right = next(i for i, s in enumerate(w.start_positions) if s)
    starts, ends = logits_for(w, {right: [(w.start_positions[right], w.end_positions[right], 5.0)]})
    for x in starts + ends:
        x[0] = 6.0  # [CLS] scores 12 in every window, the answer 10
    assert extract_answers(w, starts, ends, [CONTEXT], allow_null=True) == [""]
    assert extract_answers(w, starts, ends, [CONTEXT]) == [ANSWER]
    starts[0][0] = 3.0  # the lowest null score over the windows (6) is below the answer's: the answer stands
    assert extract_answers(w, starts, ends, [CONTEXT], allow_null=True) == [ANSWER]


def test_exact_match_and_f1_against_hand_computed_values():
    predictions = ["the cat sat", "a dog", "", "Paris", "something"]
    gold = [["The cat sat."], ["the big dog"], [], ["London", "paris!"], []]
    # EM: 1, 0, 1 (unanswerable, empty), 1 (best gold), 0 → 3/5; F1: 1, 2·1·½/(1+½) = ⅔, 1, 1, 0 → (3 + ⅔)/5
    scores = squad_metrics(predictions, gold)
    assert scores["exact_match"] == pytest.approx(0.6)
    assert scores["f1"] == pytest.approx((3 + 2 / 3) / 5, abs=1e-4) and scores["score"] == scores["f1"]
