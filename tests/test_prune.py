"""Vocabulary pruning: which pieces stay, a pruned tokenizer of each kind segmenting as the teacher's does, and
a pruned student reading the teacher's ids through its map exactly as it reads its own."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from xdray.config import StudentConfig
from xdray.distill.objective import DistillModule
from xdray.distill.prune import choose_pieces, id_map, piece_counts, prune_tokenizer
from xdray.distill.student import build_student

from .conftest import NEGATIVE, NOUNS, POSITIVE, build_tiny_backbone
from .encoders import build_tiny_encoder

EXTRA = ["zebra", "quantum", "harbour", "violin", "glacier", "saffron", "lantern", "meadow", "orbit", "pixel"]
TEACHER_CORPUS = [f"the {n} is {a} and the rest follows" for n in NOUNS for a in POSITIVE + NEGATIVE] * 2 + \
    [f"a {x} near the {y}" for x in EXTRA for y in EXTRA] * 2
TASK = [f"the {n} is {a}" for n in NOUNS[:4] for a in POSITIVE[:3] + NEGATIVE[:3]]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("prune")
    found = {kind: build_tiny_encoder(kind, root / kind, TEACHER_CORPUS) for kind in ("roberta", "xlm-roberta")}
    found["bert"] = build_tiny_backbone(root / "bert", TEACHER_CORPUS)
    return found


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta"])
def test_pruned_tokenizer_segments_like_the_teachers(tokenizers, kind, tmp_path):
    teacher = AutoTokenizer.from_pretrained(tokenizers[kind])
    ids = pa.chunked_array([pa.array(teacher(TASK[:10])["input_ids"])])  # as the labelled Parquet holds them
    counts = piece_counts(teacher, [ids], [TASK[10:]])
    keep = choose_pieces(teacher, counts)
    assert len(keep) < len(teacher) and set(teacher.all_special_ids) <= set(keep)
    assert {i for i in range(len(teacher)) if counts[i]} <= set(keep)
    pruned = prune_tokenizer(teacher, keep)
    pruned.save_pretrained(tmp_path)
    served = AutoTokenizer.from_pretrained(tmp_path)  # what ships with the student
    assert type(served) is type(teacher) and len(served) == len(keep)
    table = id_map(keep, teacher)
    for text in TASK + ["the film is great"]:
        assert served(text)["input_ids"] == table[teacher(text)["input_ids"]].tolist(), text
    unseen = served("the zebra and the rest follows")["input_ids"]  # not in the data: smaller pieces, no unknowns
    assert served.unk_token_id not in unseen and unseen[-1] == served.sep_token_id
    assert len(unseen) > len(teacher("the zebra and the rest follows")["input_ids"])
    assert served("the film", "is great")["input_ids"] == table[teacher("the film", "is great")["input_ids"]].tolist()


def test_cap_keeps_specials_single_characters_and_the_most_frequent(tokenizers):
    teacher = AutoTokenizer.from_pretrained(tokenizers["xlm-roberta"])
    counts = piece_counts(teacher, [], [TASK * 3 + ["zebra"]])
    full, capped = choose_pieces(teacher, counts), choose_pieces(teacher, counts, cap=40)
    assert len(capped) < len(full)
    zebra = teacher.convert_tokens_to_ids("▁zebra")
    film = teacher.convert_tokens_to_ids("▁film")
    assert zebra in full and zebra not in capped and film in capped  # rare goes first
    assert all(len(teacher.convert_ids_to_tokens(i).lstrip("▁")) <= 1 or i in full for i in capped)


def test_pruned_student_reads_teacher_ids_through_its_map(tokenizers):
    teacher_model = AutoModelForSequenceClassification.from_pretrained(tokenizers["xlm-roberta"], num_labels=2)
    teacher = AutoTokenizer.from_pretrained(tokenizers["xlm-roberta"])
    keep = choose_pieces(teacher, piece_counts(teacher, [], [TASK]))
    spec = StudentConfig(layers=1, hidden=16, heads=2)
    full = build_student(spec, teacher_model, 2, tokenizer=teacher)
    student = build_student(spec, teacher_model, 2, tokenizer=teacher, keep=keep).eval()
    saved = (len(teacher) - len(keep)) * 16
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in student.parameters()) == saved
    module = DistillModule(student, None, 0, id_map=id_map(keep, teacher)).eval()
    pruned = prune_tokenizer(teacher, keep)
    with torch.no_grad():
        via_map = module(**teacher(TASK[:4], padding=True, return_tensors="pt"))["logits"]
        direct = student(**pruned(TASK[:4], padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(via_map, direct)
    assert "id_map" not in module.state_dict()  # never saved with the model


def test_search_trials_build_their_students_on_one_pruned_vocabulary(tiny_task, tmp_path):
    """What ``xdray search`` does with ``vocab: prune``: the data picks the pieces once, every trial's initial
    student is built on them and ships the pruned tokenizer beside it."""
    from xdray.config import validate_config
    from xdray.config.space import every_candidate
    from xdray.data.tables import load_splits
    from xdray.distill.prune import corpus_pieces
    from xdray.distill.run import source_data
    from xdray.search.trial import TrialContext, _build

    from .conftest import tiny_config

    raw = tiny_config(tiny_task, tmp_path / "out", label={"teacher": str(tiny_task["backbone"])},
                      distill={"student": {"layers": 1, "hidden": 16, "heads": 2, "vocab": "prune", "vocab_cap": 120}})
    cfg = validate_config(raw)
    teacher = AutoTokenizer.from_pretrained(cfg.teacher_dir)
    keep, report = corpus_pieces(cfg, source_data(cfg).texts, teacher)
    assert report["kept_pieces"] == len(keep) < len(teacher)
    ctx = TrialContext(cfg, None, None, "xdray-test", cfg.distill, {}, None, 2, [], tuple(keep))
    table = id_map(keep, teacher)
    covered = [t for t in load_splits(cfg)[1].texts if set(teacher(t)["input_ids"]) <= set(keep)]
    assert covered
    for cand in every_candidate(cfg):
        dest = tmp_path / cand.key
        counts, forwards = _build(ctx, cand, dest)
        student = AutoModelForSequenceClassification.from_pretrained(dest)
        served = AutoTokenizer.from_pretrained(dest)
        assert forwards == 0 and student.config.vocab_size == len(served) == len(keep)
        assert student.config.num_hidden_layers == cand.student.layers
        for text in covered:  # pieces the cap kept segment as the teacher's do
            assert served(text)["input_ids"] == table[teacher(text)["input_ids"]].tolist()
        assert counts["total"] == sum(p.numel() for p in student.parameters())
