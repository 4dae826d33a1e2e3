"""Teachers of every common encoder family: blocks and embeddings found generically, ``teacher-layers`` copying
where the block layouts agree (and refusing in one line where they do not), PCA embeddings from every teacher,
and a ``pretrained:`` source carried across vocabularies."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from xdray.cli import main
from xdray.config import StudentConfig
from xdray.distill.architectures import embedding_modules, encoder_blocks, param_counts, position_offset
from xdray.distill.student import build_student, check_student
from xdray.distill.vocab import map_vocab
from xdray.errors import XdrayError

from .conftest import NEGATIVE, NOUNS, POSITIVE, build_tiny_backbone, tiny_config
from .encoders import KINDS, build_tiny_encoder

CORPUS = [f"the {n} is {a} and the rest follows" for n in NOUNS for a in POSITIVE + NEGATIVE] * 3
EXTRA = ["zebra", "quantum", "harbour", "violin", "glacier", "saffron", "lantern", "meadow"]
COPYABLE = {"bert", "roberta", "xlm-roberta", "electra"}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("teachers")
    found = {kind: build_tiny_encoder(kind, root / kind, CORPUS) for kind in KINDS}
    found["bert"] = build_tiny_backbone(root / "bert", CORPUS)
    return found


def _load(path):
    return (AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval(),
            AutoTokenizer.from_pretrained(path))


@pytest.mark.parametrize("kind", ["bert", *KINDS])
def test_blocks_and_embeddings_found_in_every_family(teachers, kind):
    model, tokenizer = _load(teachers[kind])
    assert model.config.model_type == kind
    assert len(encoder_blocks(model)) == 2
    counts = param_counts(model)
    assert counts["embeddings"] >= model.get_input_embeddings().weight.numel()
    assert sum(counts[k] for k in ("embeddings", "encoder", "head")) == counts["total"]
    assert all(m is not None for m in embedding_modules(model))
    # PCA embeddings from every teacher: a narrower BERT student on the teacher's vocabulary
    spec = StudentConfig(layers=1, hidden=16, heads=2)
    student = build_student(spec, model, 2, tokenizer=tokenizer)
    assert student.config.vocab_size == model.config.vocab_size
    batch = tokenizer(["the film is great", "a dull story"], padding=True, return_tensors="pt")
    assert student(**batch).logits.shape == (2, 2)


@pytest.mark.parametrize("kind", ["bert", *KINDS])
def test_teacher_layers_copy_exactly_or_refuse_in_one_line(teachers, kind):
    model, tokenizer = _load(teachers[kind])
    spec = StudentConfig(layers=2, hidden=32, heads=2, intermediate=64, init="teacher-layers", embeddings="copy")
    if kind not in COPYABLE:
        with pytest.raises(XdrayError) as err:
            check_student(spec, model.config)
        assert "\n" not in str(err.value) and kind in str(err.value) and "fix:" in str(err.value)
        return
    student = build_student(spec, model, 2, tokenizer=tokenizer).eval()
    # the BERT student is the teacher's encoder, positions re-based (RoBERTa's start at pad_token_id + 1 = 2)
    assert position_offset(model.config) == (2 if kind in ("roberta", "xlm-roberta") else 0)
    batch = tokenizer(["the film is great and the rest follows", "a dull story"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = student.base_model(**batch).last_hidden_state
        theirs = model.base_model(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-4)


def test_pretrained_source_is_carried_across_vocabularies(teachers):
    """MiniLM-style BERT WordPiece blocks under an MPNet teacher: rows of shared tokens are copied, the rest
    filled from the teacher's PCA mapped into the source's space; coverage is what the tokenizers share."""
    mpnet, mpnet_tok = _load(teachers["mpnet"])
    source_tok = AutoTokenizer.from_pretrained(teachers["bert"])
    mapping = map_vocab(mpnet_tok, source_tok)
    assert 0.5 < mapping.coverage < 1.0  # same corpus, different specials and trainers
    source = AutoModelForSequenceClassification.from_pretrained(teachers["bert"], num_labels=2)
    spec = StudentConfig(layers=2, hidden=32, heads=2, intermediate=64, init=f"pretrained:{teachers['bert']}",
                         embeddings="copy")
    student = build_student(spec, mpnet, 2, tokenizer=mpnet_tok)
    words, rows = student.get_input_embeddings().weight, source.get_input_embeddings().weight
    for t, s in zip(mapping.teacher_ids, mapping.source_ids):
        torch.testing.assert_close(words[t], rows[s])
    film = mpnet_tok.convert_tokens_to_ids("film")
    assert film in mapping.teacher_ids and mapping.source_ids[mapping.teacher_ids.index(film)] == \
        source_tok.convert_tokens_to_ids("film")
    missing = sorted(set(range(len(words))) - set(mapping.teacher_ids))
    assert missing and words[missing].abs().sum() > 0  # filled, not left at the random init's scale
    assert (words[missing].norm(dim=1).mean() / rows.norm(dim=1).mean()) < 3


@pytest.mark.parametrize("teacher_kind,source_kind", [("xlm-roberta", "roberta"), ("roberta", "bert"),
                                                      ("deberta-v2", "xlm-roberta")])
def test_token_spellings_match_across_conventions(teachers, teacher_kind, source_kind):
    """``▁film`` (SentencePiece), ``Ġfilm`` (byte-level BPE) and ``film`` (WordPiece) are one word-start token."""
    teacher, source = (AutoTokenizer.from_pretrained(teachers[k]) for k in (teacher_kind, source_kind))
    found = map_vocab(teacher, source)
    mapping = dict(zip(found.teacher_ids, found.source_ids))
    whole = 0
    for word in NOUNS + POSITIVE:
        t_ids = teacher(" " + word, add_special_tokens=False)["input_ids"]
        s_ids = source(" " + word, add_special_tokens=False)["input_ids"]
        if len(t_ids) == len(s_ids) == 1:
            whole += 1
            assert mapping.get(t_ids[0]) == s_ids[0], (word, teacher.convert_ids_to_tokens(t_ids),
                                                       source.convert_ids_to_tokens(s_ids))
    assert whole >= 8
    assert mapping[teacher.pad_token_id] == source.pad_token_id


@pytest.mark.slow
@pytest.mark.parametrize("kind,vocab", [("roberta", "teacher"), ("mpnet", "teacher"), ("deberta-v2", "prune")])
def test_every_family_teaches_through_label_and_distill(ray_local, tiny_task, tmp_path, kind, vocab):
    """teacher → label → distill from a tiny teacher of the families furthest from BERT (byte-level BPE, pad id 1,
    no segment ids, positions after the pad; MPNet's relative bias; DeBERTa's disentangled attention, no absolute
    positions, no type vocabulary); XLM-R and ELECTRA differ from those only in what the tests above check. The
    student is a standard BERT on the teacher's vocabulary (or the part of it the data uses: ``prune``, with a
    teacher whose tokenizer also knows words the task never uses) that loads with
    ``AutoModelForSequenceClassification`` and the saved tokenizer, and serves alone."""
    corpus = tiny_task["transfer"].read_text().splitlines()
    extra = [f"a {x} near the {y}" for x in EXTRA for y in EXTRA] if vocab == "prune" else []
    backbone = build_tiny_encoder(kind, tmp_path / "backbone", corpus + extra)
    cfg = tiny_config(tiny_task, tmp_path / "out", teacher={"backbone": str(backbone), "epochs": 3},
                      label={"actors": 1}, distill={"workers": 1, "student": {"layers": 1, "hidden": 16, "heads": 2,
                                                                              "vocab": vocab}})
    if kind == "roberta":  # extra test splits by name (a language): scored and logged beside test
        (tmp_path / "upper.tsv").write_text(tiny_task["test"].read_text().upper().replace("TEXT\tLABEL", "text\tlabel"))
        cfg["data"]["tests"] = {"same": str(tiny_task["test"]), "upper": str(tmp_path / "upper.tsv")}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(cfg))
    for step in ("teacher", "label", "distill"):
        assert main([step, str(job)]) == 0, (kind, step)
    student_dir = tmp_path / "out" / "distill" / "student"
    student = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    tokenizer, teacher_tokenizer = AutoTokenizer.from_pretrained(student_dir), AutoTokenizer.from_pretrained(backbone)
    summary = json.loads((tmp_path / "out" / "distill" / "summary.json").read_text())
    assert student.config.model_type == "bert" and student.config.vocab_size == len(tokenizer)
    if vocab == "teacher":
        assert tokenizer.get_vocab() == teacher_tokenizer.get_vocab()
        assert student.config.vocab_size == AutoConfig.from_pretrained(backbone).vocab_size
    else:
        report = summary["vocab"]
        assert report["kept_pieces"] == len(tokenizer) < report["teacher_pieces"] == len(teacher_tokenizer)
        assert not {f"▁{x}" for x in EXTRA} & set(tokenizer.get_vocab())  # words only the tokenizer knew
        text = "the film is great"
        assert tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"]) == \
            teacher_tokenizer.convert_ids_to_tokens(teacher_tokenizer(text)["input_ids"])
    with torch.no_grad():
        logits = student(**tokenizer(["the film is great", "a dull movie"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert summary["test_accuracy"] > 0.7, (kind, summary["test_accuracy"])  # scored from the saved directory
    if kind == "roberta":
        for step in ("teacher", "distill"):
            done = json.loads((tmp_path / "out" / step / "summary.json").read_text())
            assert done["test_by_language"]["same"] == done["test_accuracy"]  # the same split, the same score
            assert 0 <= done["test_by_language"]["upper"] <= 1
            logged = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}").get_run(done["mlflow_run_id"])
            assert logged.data.metrics["test_accuracy.upper"] == done["test_by_language"]["upper"]
