"""Unit tests of the pure-torch core: the student's size, PCA embeddings, batching. No Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from xdray.config import StudentConfig
from xdray.distill.architectures import param_counts
from xdray.distill.batches import accuracy, collate, length_sorted_batches
from xdray.distill.student import build_student, pca_compress


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=32)
    return BertModel(config)


def test_student_shape_and_exact_param_counts(teacher):
    spec = StudentConfig(layers=2, hidden=16, heads=2, intermediate=32)
    student = build_student(spec, teacher, num_labels=3)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 16, 2, 32)
    assert c.vocab_size == 120 and c.num_labels == 3
    counts = param_counts(student)
    h, v, p, ffn = 16, 120, 32, 32
    embeddings = v * h + p * h + 2 * h + 2 * h  # words, positions, token types, LayerNorm
    layer = 4 * (h * h + h) + 2 * h + (h * ffn + ffn) + (ffn * h + h) + 2 * h
    head = (h * h + h) + (h * 3 + 3)  # pooler + classifier
    assert counts == {"embeddings": embeddings, "encoder": 2 * layer, "head": head,
                      "total": embeddings + 2 * layer + head}
    assert counts["total"] == sum(p.numel() for p in student.parameters())


def test_pca_embeddings_keep_the_teachers_geometry(teacher):
    words = teacher.get_input_embeddings().weight.detach()
    compressed = pca_compress(words, 16)
    assert compressed.shape == (120, 16)
    # nearest neighbours in the compressed space agree with the teacher's far more than chance
    def neighbours(m):
        m = torch.nn.functional.normalize(m - m.mean(0), dim=1)
        sim = m @ m.T
        sim.fill_diagonal_(-2)
        return sim.argmax(1)

    agree = (neighbours(words) == neighbours(compressed)).float().mean().item()
    assert agree > 0.2  # chance is ~1/119
    student = build_student(StudentConfig(layers=1, hidden=16, heads=2), teacher, num_labels=2)
    assert torch.allclose(student.get_input_embeddings().weight, compressed)
    random_init = build_student(StudentConfig(layers=1, hidden=16, heads=2, embeddings="random"), teacher, 2)
    assert not torch.allclose(random_init.get_input_embeddings().weight, compressed)


def test_pca_pads_when_the_student_is_wider():
    m = torch.randn(10, 4)
    out = pca_compress(m, 6)
    assert out.shape == (10, 6) and torch.equal(out[:, :4], m) and not out[:, 4:].any()


def test_student_saves_and_loads_as_a_standard_hf_model(teacher, tmp_path):
    student = build_student(StudentConfig(layers=1, hidden=16, heads=2), teacher, num_labels=2)
    student.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 7, 2]])
    student.eval(), loaded.eval()
    assert torch.allclose(student(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_collate_pads_token_rows_and_keeps_targets(tiny_task):
    tokenizer = AutoTokenizer.from_pretrained(tiny_task["backbone"])
    raw = {
        "input_ids": np.array([np.array([2, 5, 6, 3]), np.array([2, 7, 3])], dtype=object),
        "logits": np.array([np.array([0.5, -0.5]), np.array([1.0, 2.0])], dtype=object),
    }
    batch = collate(raw, tokenizer, max_length=16, device=torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[2, 5, 6, 3], [2, 7, 3, tokenizer.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["teacher_logits"].tolist() == [[0.5, -0.5], [1.0, 2.0]]
    text = collate({"text": np.array(["a great film", "dull"]), "label": np.array([1, 0])}, tokenizer, 16, "cpu")
    assert text["labels"].tolist() == [1, 0] and text["input_ids"].shape[0] == 2


def test_length_sorted_batches_cover_every_index_once():
    texts = ["aaaa", "a", "aaa", "aa", "aaaaa"]
    batches = list(length_sorted_batches(texts, 2))
    assert batches == [[1, 3], [2, 0], [4]]
    assert accuracy(np.array([1, 0, 1]), [1, 1, 1]) == pytest.approx(2 / 3)
