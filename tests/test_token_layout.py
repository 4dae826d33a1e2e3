"""Per-token teacher outputs: which positions are stored, float16 and top-k round trips through Arrow, the
masked losses (values, masks, gradients), QA span targets, and a layout/task mismatch refused in one line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from xdray.distill.batches import table_batches
from xdray.distill.losses import logits_kl, masked_kl, masked_mse, span_ce
from xdray.distill.token_layout import (
    Layout,
    bytes_per_token,
    kept_positions,
    span_columns,
    span_targets,
    token_columns,
    token_targets,
)
from xdray.errors import XdrayError

C = 7
LENGTHS = [9, 5, 12]


@pytest.fixture
def teacher_logits() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0, 3, (n, C)).astype(np.float32) for n in LENGTHS]


def positions() -> list[list[int]]:
    # [CLS] w0 w0 w1 w2 w2 w2 w3 [SEP] ...: word ids as a fast tokenizer gives them
    words = [[None, 0, 0, 1, 2, 2, 2, 3, None], [None, 0, 1, 1, None],
             [None, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, None]]
    return [kept_positions(w, "first_subword") for w in words]


def batch(table: pa.Table) -> dict:
    return table_batches(table, 64)[0]  # numpy cells, as the workers' Ray Data batches hold them


def test_first_subword_or_every_token_never_the_specials():
    words = [None, 0, 0, 1, 2, 2, None, None]
    assert kept_positions(words, "first_subword") == [1, 3, 4]
    assert kept_positions(words, "all") == [1, 2, 3, 4, 5]


def test_float16_layout_round_trips_the_kept_tokens(teacher_logits):
    layout = Layout("tokens", "first_subword", None, C)
    pos = positions()
    raw = batch(pa.table(token_columns(teacher_logits, pos, layout)))
    out = token_targets(raw, 12, layout)
    logits, mask = out["teacher_token_logits"], out["teacher_token_mask"]
    assert logits.shape == (3, 12, C) and "teacher_token_lse" not in out
    for i, p in enumerate(pos):
        assert mask[i].any(-1).nonzero().flatten().tolist() == p
        torch.testing.assert_close(logits[i, p], torch.from_numpy(teacher_logits[i][p]), atol=3e-3, rtol=1e-3)
    assert not logits[~mask].any()
    cut = token_targets(raw, 4, layout)  # the student's max_length cuts the rows: later positions are dropped
    assert cut["teacher_token_mask"].shape == (3, 4, C)
    assert cut["teacher_token_mask"][0].any(-1).nonzero().flatten().tolist() == [1, 3]


def test_top_k_keeps_the_largest_logits_and_k_at_the_label_count_loses_nothing(teacher_logits):
    pos = positions()
    top = Layout("tokens", "first_subword", 2, C)
    assert not top.lossless and Layout("tokens", "first_subword", C, C).lossless
    table = pa.table(token_columns(teacher_logits, pos, top))
    assert {"token_labels", "token_lse"} <= set(table.column_names)
    out = token_targets(batch(table), 12, top)
    mask = out["teacher_token_mask"]
    for i, p in enumerate(pos):
        assert (mask[i, p].sum(-1) == 2).all()
        best = np.argsort(-teacher_logits[i][p], -1)[:, :2]
        assert all(set(mask[i, j].nonzero().flatten().tolist()) == set(b) for j, b in zip(p, best))
        lse = torch.logsumexp(torch.from_numpy(teacher_logits[i][p]), -1)
        torch.testing.assert_close(out["teacher_token_lse"][i, p], lse, atol=2e-2, rtol=2e-3)
    full = pa.table(token_columns(teacher_logits, pos, Layout("tokens", "first_subword", None, C)))
    assert pa.table(token_columns(teacher_logits, pos, Layout("tokens", "first_subword", C, C))).equals(full)
    assert bytes_per_token(table, top) < bytes_per_token(full, Layout("tokens", num_labels=C))


def test_masked_kl_with_every_label_stored_is_the_plain_kl():
    torch.manual_seed(0)
    s, t = torch.randn(4, 6, C), torch.randn(4, 6, C) * 2
    mask = torch.ones(4, 6, C, dtype=torch.bool)
    expected = logits_kl(s.reshape(-1, C), t.reshape(-1, C), 2.0)
    torch.testing.assert_close(masked_kl(s, t, mask, 2.0), expected)
    mask[:, 3:] = False  # tokens with nothing stored do not count
    torch.testing.assert_close(masked_kl(s, t, mask, 2.0), logits_kl(s[:, :3].reshape(-1, C), t[:, :3].reshape(-1, C),
                                                                      2.0))


def test_top_k_kl_with_the_rest_bucket_is_exact():
    """Against the full distributions grouped into {top-k labels, the rest}, at T = 1."""
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, C), torch.randn(2, 3, C) * 3
    top = t.topk(2, -1).indices
    mask = torch.zeros_like(t, dtype=torch.bool).scatter(-1, top, True)
    got = masked_kl(s, t.masked_fill(~mask, 0), mask, rest=torch.logsumexp(t, -1))

    def grouped(x):
        p = x.softmax(-1)
        return torch.cat([p.gather(-1, top), (p * ~mask).sum(-1, keepdim=True)], -1)

    ps, pt = grouped(s), grouped(t)
    expected = (pt * (pt.log() - ps.log())).sum(-1).mean()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_masked_losses_send_no_gradient_to_unstored_entries():
    s = torch.randn(2, 5, C, requires_grad=True)
    t = torch.randn(2, 5, C)
    mask = torch.zeros(2, 5, C, dtype=torch.bool)
    mask[0, 1] = mask[1, 2] = True
    (masked_mse(s, t, mask) + masked_kl(s, t, mask)).backward()
    touched = s.grad.abs().sum(-1) > 0
    assert touched.nonzero().tolist() == [[0, 1], [1, 2]]
    torch.testing.assert_close(masked_mse(s, t, mask), F.mse_loss(s[mask], t[mask]))


def test_span_targets_and_losses_skip_padding():
    start = [np.array([0.5, 2.0, -1.0], np.float32), np.array([1.0, 0.0, 3.0, 0.25, -2.0], np.float32)]
    end = [x[::-1].copy() for x in start]
    raw = batch(pa.table(span_columns(start, end)))
    out = span_targets(raw, 5)
    assert out["teacher_span_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    torch.testing.assert_close(out["teacher_start_logits"][1], torch.from_numpy(start[1]))
    student = torch.randn(2, 5, requires_grad=True)
    loss = masked_kl(student, out["teacher_start_logits"], out["teacher_span_mask"])
    loss.backward()
    assert not student.grad[0, 3:].any() and student.grad[0, :3].any()
    s, e = torch.randn(2, 5), torch.randn(2, 5)
    gold_s, gold_e = torch.tensor([1, 2]), torch.tensor([2, 3])
    padded = s.clone()
    padded[0, 3:] = 100.0  # padding logits must not matter
    mask = out["teacher_span_mask"]
    assert span_ce(padded, e, gold_s, gold_e, mask) == pytest.approx(span_ce(s, e, gold_s, gold_e, mask).item())
    full = (F.cross_entropy(s[1:], gold_s[1:]) + F.cross_entropy(e[1:], gold_e[1:])) / 2
    assert span_ce(s[1:], e[1:], gold_s[1:], gold_e[1:], mask[1:]).item() == pytest.approx(full.item())


def test_a_layout_that_does_not_fit_the_task_is_one_line():
    with pytest.raises(XdrayError, match=r"labels: the labelled Parquet holds sequence outputs, but the task is "
                                         r"tokens; fix: label again"):
        Layout.read(None).check("tokens", 21, "labels")
    with pytest.raises(XdrayError, match=r"holds logits of 9 token labels, the task has 21; fix:"):
        Layout("tokens", num_labels=9).check("tokens", 21, "labels")
    Layout.read(Layout("tokens", "all", 3, 21).describe()).check("tokens", 21, "labels")


@pytest.fixture(scope="module")
def token_teacher(tmp_path_factory):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from .conftest import build_tiny_backbone

    root = tmp_path_factory.mktemp("token-teacher")
    corpus = ["anna smith went to paris today", "we met bob in lima last week", "the film was great"]
    backbone = build_tiny_backbone(root / "backbone", corpus)
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(backbone, num_labels=4)
    model.save_pretrained(root / "teacher")
    AutoTokenizer.from_pretrained(backbone).save_pretrained(root / "teacher")
    return root / "teacher"


@pytest.mark.parametrize("top_k", [None, 2])
def test_the_labeler_stores_each_words_first_sub_word_and_dev_tags(token_teacher, top_k):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from xdray.label.labeler import ChunkLabeler

    layout = Layout("tokens", "first_subword", top_k, 4)
    labeler = ChunkLabeler(str(token_teacher), max_length=10, threads=1, batch_size=2, layout=layout.describe())
    texts = ["anna smith went to paris today", "bob", "we met bob in lima last week and the film was great"]
    table, stats = labeler.label_table(pa.table({"id": ["a", "b", "c"], "text": texts}))
    assert stats["labelled"] == 3 and stats["truncated"] == 1  # the third row is over 10 tokens
    tokenizer = AutoTokenizer.from_pretrained(token_teacher)
    model = AutoModelForTokenClassification.from_pretrained(token_teacher).eval()
    out = token_targets(batch(table), 10, layout)
    for i, text in enumerate(texts):
        enc = tokenizer([text.split()], is_split_into_words=True, truncation=True, max_length=10, return_tensors="pt")
        assert table.column("input_ids")[i].as_py() == enc["input_ids"][0].tolist()
        first = kept_positions(enc.word_ids(0), "first_subword")
        assert table.column("token_positions")[i].as_py() == first
        with torch.no_grad():
            expected = model(**enc).logits[0, first]
        stored = out["teacher_token_logits"][i, first]
        keep = out["teacher_token_mask"][i, first]
        assert (keep.sum(-1) == (top_k or 4)).all()
        torch.testing.assert_close(stored[keep], expected[keep], atol=5e-3, rtol=1e-3)
    dev, _ = labeler.label_table(pa.table({"id": ["d"], "tokens": [["anna", "smith", "went"]], "tags": [[1, 2, 0]],
                                           "label": [0]}))
    enc = tokenizer([["anna", "smith", "went"]], is_split_into_words=True)
    tags = dev.column("token_tags")[0].as_py()
    first = kept_positions(enc.word_ids(0), "first_subword")
    assert [tags[p] for p in first] == [1, 2, 0] and all(t == -100 for j, t in enumerate(tags) if j not in first)


def test_labelled_token_rows_collate_into_targets_the_objective_reads(token_teacher):
    """The teacher against its own stored outputs: zero loss up to float16 rounding; a fresh head is far off."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from xdray.distill.batches import collate
    from xdray.distill.objective import DistillModule, Objective
    from xdray.label.labeler import ChunkLabeler

    layout = Layout("tokens", "first_subword", None, 4)
    labeler = ChunkLabeler(str(token_teacher), max_length=16, threads=1, batch_size=4, layout=layout.describe())
    texts = ["anna smith went to paris today", "we met bob in lima last week", "the film was great"]
    table, _ = labeler.label_table(pa.table({"id": ["a", "b", "c"], "text": texts}))
    tokenizer = AutoTokenizer.from_pretrained(token_teacher)
    batch_ = collate(batch(table), tokenizer, 16, "cpu", layout)
    teacher = DistillModule(AutoModelForTokenClassification.from_pretrained(token_teacher).eval(), None, 0)
    torch.manual_seed(3)
    other = AutoModelForTokenClassification.from_pretrained(token_teacher)
    torch.nn.init.normal_(other.classifier.weight, std=1.0)  # another head on the same encoder
    fresh = DistillModule(other, None, 0)
    for name in ("logits_mse", "logits_kl"):
        objective = Objective((name,))
        with torch.no_grad():
            own = objective(teacher(**{k: batch_[k] for k in ("input_ids", "attention_mask")}), batch_)["total"]
        assert own < 1e-4, (name, own)
    out = fresh(**{k: batch_[k] for k in ("input_ids", "attention_mask")})
    loss = Objective(("logits_mse",))(out, batch_)["total"]
    assert loss > 1e-3
    dev, _ = labeler.label_table(pa.table({"id": ["d"], "tokens": [["anna", "smith", "went"]], "tags": [[1, 2, 0]]}))
    dev_batch = collate(batch(dev), tokenizer, 16, "cpu", layout)
    assert dev_batch["labels"].shape == dev_batch["input_ids"].shape
    ce = Objective(("ce",))(fresh(**{k: dev_batch[k] for k in ("input_ids", "attention_mask")}), dev_batch)["total"]
    assert torch.isfinite(ce) and ce > 0


def test_the_student_role_of_a_token_task_batches_words_or_labels_and_scores_entities(token_teacher):
    """What a distillation worker does for a token task, without Ray: a per-token student head, word/tag rows and
    labelled rows each collated, the online teacher's targets on every real token, entity F1 on the whole of dev."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, BertForTokenClassification

    from xdray.config import StudentConfig
    from xdray.distill.objective import Objective, teacher_targets
    from xdray.distill.role import StudentRole
    from xdray.distill.student import build_student
    from xdray.label.labeler import ChunkLabeler

    layout = Layout("tokens", "first_subword", 2, 4)
    task = {"type": "token_classification", "names": ["B-LOC", "B-PER", "I-PER", "O"], "num_labels": 4}
    role = StudentRole(StudentConfig(layers=1, hidden=16, heads=2).model_dump(), task=task, layout=layout.describe())
    assert not role.shards_dev and StudentRole({}).shards_dev  # entity F1 is not a sum over shards
    teacher = AutoModelForTokenClassification.from_pretrained(token_teacher).eval()
    tokenizer = AutoTokenizer.from_pretrained(token_teacher)
    student = build_student(StudentConfig(layers=1, hidden=16, heads=2), teacher, 4, task_type=task["type"])
    assert isinstance(student, BertForTokenClassification) and student.config.id2label == teacher.config.id2label

    words = role.collate({"tokens": [["anna", "smith", "went"], ["bob"]], "tags": [[1, 2, 3], [1]]}, tokenizer, 16,
                         "cpu")
    assert words["labels"][0, 1:4].tolist() == [1, 2, 3] and words["labels"][1, 1].item() == 1
    labeler = ChunkLabeler(str(token_teacher), max_length=16, threads=1, batch_size=4, layout=layout.describe())
    table, _ = labeler.label_table(pa.table({"id": ["a"], "text": ["anna smith went to paris today"]}))
    stored = role.collate(batch(table), tokenizer, 16, "cpu")
    assert stored["teacher_token_mask"].sum(-1).max() == 2 and "teacher_token_lse" in stored  # top-2 + the rest

    online = teacher_targets(teacher, words, Objective(("logits_kl",)))
    assert online["teacher_token_logits"].shape == (2, words["input_ids"].shape[1], 4)
    assert (online["teacher_token_mask"].any(-1) == words["attention_mask"].bool()).all()  # every real token
    metric = role.metric(pa.table({}), tokenizer, 16)
    gold = torch.tensor([[-100, 1, 2, 3, -100]])
    right = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 3, 0]]), 4).float()
    assert metric([right], [gold])["score"] == 1.0
    assert metric([torch.nn.functional.one_hot(torch.tensor([[0, 3, 3, 3, 0]]), 4).float()], [gold])["f1"] == 0.0
