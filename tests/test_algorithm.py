"""Unit tests of the XtremeDistil algorithm in plain torch: losses, the student builder, the progressive
schedule. No Ray, no DeepSpeed."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from xdray.config import StageConfig, StudentConfig
from xdray.distill import losses as L
from xdray.distill.architectures import param_counts
from xdray.distill.batches import model_inputs
from xdray.distill.objective import DistillModule, Objective, teacher_targets
from xdray.distill.schedule import Data, TorchBackend, expand_stages, run_schedule
from xdray.distill.student import build_student, pca_compress, spread_layers
from xdray.distill.units import block_units, param_groups, set_trainable
from xdray.errors import XdrayError


def _teacher(hidden=48, heads=12, layers=4, seed=0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=90, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=2)
    config._attn_implementation = "eager"
    return BertForSequenceClassification(config).eval()


def _inputs(batch=3, length=7):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 90, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


# ---------------------------------------------------------------------------------------------------------
# Losses


def test_layer_maps_top_aligned_and_uniform():
    assert L.layer_map(6, 12, "top") == [6, 7, 8, 9, 10, 11, 12]
    assert L.layer_map(3, 12, "uniform") == [0, 4, 8, 12]
    assert L.layer_map(2, 2, "top") == [0, 1, 2]
    with pytest.raises(ValueError):
        L.layer_map(4, 2)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_loss_projects_64_to_32_and_has_gradients(kind):
    torch.manual_seed(0)
    student = [torch.randn(5, 32, requires_grad=True) for _ in range(3)]
    project = torch.nn.Linear(32, 64)
    teacher = [torch.randn(5, 64) for _ in range(3)]
    loss = L.hidden_loss([project(s) for s in student], teacher, kind)
    assert loss.shape == () and loss.item() > 0
    loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert project.weight.grad.abs().sum() > 0
    assert L.hidden_loss(teacher, teacher, kind).item() == pytest.approx(0, abs=1e-6)


def test_token_positions_leave_out_padding():
    states = torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert L.select_positions(states, mask, "tokens").shape == (3, 2)
    assert torch.equal(L.select_positions(states, mask, "cls"), states[:, 0])


def test_attention_losses_work_for_12_teacher_heads_and_4_student_heads():
    teacher, inputs = _teacher(), _inputs()
    spec = StudentConfig(layers=2, hidden=32, heads=4, intermediate=64, embeddings="random")
    student = build_student(spec, teacher, num_labels=2)
    student.config._attn_implementation = "eager"
    module = DistillModule(student, teacher_hidden=48, states=3)
    for mode in ("mean_heads", "relation"):
        objective = Objective(losses=("attention",), layer_map=tuple(L.layer_map(2, 4)), attention=mode)
        batch = inputs | teacher_targets(teacher, inputs, objective)
        out = module(**inputs, **objective.forward_kwargs())
        if mode == "mean_heads":
            assert out["attentions"][0].shape == (3, 4, 7, 7) and batch["teacher_attentions"][3].shape == (3, 12, 7, 7)
        loss = objective(out, batch)["attention"]
        assert loss.shape == () and loss.item() > 0
        module.zero_grad()
        loss.backward()
        grads = [p.grad for p in student.bert.encoder.layer[0].attention.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), mode


def test_attention_mse_ignores_padded_positions():
    mask = torch.tensor([[1, 1, 0]])
    a = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    b = a.clone()
    b[..., 2] += 5.0  # differences only at the padded key / query
    b[..., 2, :] += 5.0
    assert L.attention_mse([a], [b], mask).item() == pytest.approx(0, abs=1e-7)
    assert L.relation_kl([torch.randn(1, 3, 4)] * 1, [torch.randn(1, 3, 8)], mask).item() >= 0


def test_minilm_v2_relations_compare_any_widths_and_head_counts_and_ignore_padding():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    teacher = [torch.randn(2, 4, 48) for _ in range(3)]  # Q, K, V of a 48-wide teacher layer
    student = [torch.randn(2, 4, 16, requires_grad=True) for _ in range(3)]  # a 16-wide student's
    loss = L.qkv_relations(student, teacher, mask, heads=4)
    assert loss.shape == () and loss.item() > 0
    loss.backward()
    assert all(s.grad[0, :3].abs().sum() > 0 and s.grad[0, 3].abs().sum() == 0 for s in student)  # pads: no grad
    padded = [t.clone() for t in teacher]
    for t in padded:
        t[0, 3], t[1, 2:] = 100.0, -100.0
    assert L.qkv_relations(student, padded, mask, 4).item() == pytest.approx(loss.item(), rel=1e-6)
    same = [torch.randn(2, 4, 16) for _ in range(3)]
    assert L.qkv_relations(same, [x * 1.0 for x in same], mask, 4).item() == pytest.approx(0, abs=1e-6)
    # relations are per relation head: a width-48 teacher equals itself split in 4, and 16 does not split in 3
    with pytest.raises(ValueError, match="relation heads"):
        L.qkv_relations(student, teacher, mask, heads=3)


@pytest.mark.parametrize("family", ["bert", "mpnet", "distilbert"])
def test_relations_objective_reads_queries_keys_values_of_any_encoder_family(family):
    """The teacher's top-layer Q/K/V (BERT/MPNet/DistilBERT name them differently) against the student's top
    block, 4 relation heads across 12 → 2 attention heads: gradients reach the student's top Q/K/V only
    through this loss."""
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        MPNetConfig,
        MPNetForSequenceClassification,
    )

    torch.manual_seed(0)
    if family == "mpnet":
        teacher = MPNetForSequenceClassification(MPNetConfig(vocab_size=90, hidden_size=48, num_hidden_layers=2,
                                                             num_attention_heads=12, intermediate_size=96))
    elif family == "distilbert":
        teacher = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=90, dim=48, n_layers=2, n_heads=12,
                                                                       hidden_dim=96))
    else:
        teacher = _teacher(layers=2)
    teacher.eval()
    objective = Objective(losses=("relations",), relation_heads=4)
    ids = torch.randint(4, 90, (2, 6))
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}
    batch |= teacher_targets(teacher, batch, objective)
    assert [tuple(x.shape) for x in batch["teacher_qkv"]] == [(2, 6, 48)] * 3
    student = build_student(StudentConfig(layers=2, hidden=16, heads=2), _teacher(layers=2), 2)
    module = DistillModule(student, 48, 0)
    loss = objective(module(**model_inputs(batch), **objective.forward_kwargs()), batch)["relations"]
    loss.backward()
    top, bottom = student.bert.encoder.layer[1].attention.self, student.bert.encoder.layer[0].attention.self
    assert loss.item() > 0 and top.query.weight.grad.abs().sum() > 0 and top.value.weight.grad.abs().sum() > 0
    assert bottom.query.weight.grad.abs().sum() > 0  # lower blocks feed the top one
    assert student.classifier.weight.grad is None  # no logits in this loss


def test_logit_losses_and_token_level_cross_entropy():
    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert L.logits_mse(s, t).item() == pytest.approx(2.5)
    p = torch.softmax(t / 2, -1)
    q = torch.softmax(s / 2, -1)
    assert L.logits_kl(s, t, 2.0).item() == pytest.approx(float((p * (p / q).log()).sum()) * 4, rel=1e-5)
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    labels = torch.tensor([[-100, 1, -100], [2, -100, -100]])  # special tokens and padding are -100
    loss = L.hard_label_ce(logits, labels)
    assert loss.item() == pytest.approx(math.log(4))
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 1].abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------
# Student builder


def test_pca_keeps_the_top_variance():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(24, 24))[0]
    matrix = (torch.randn(500, 24) * torch.linspace(5, 0.1, 24)) @ basis.T + 3.0
    centered = (matrix - matrix.mean(0)).double()
    eigen = torch.linalg.eigvalsh(centered.T @ centered).flip(0)

    def explained(projected: torch.Tensor) -> float:
        """Share of the variance a linear reconstruction from ``projected`` recovers."""
        weights = torch.linalg.lstsq(projected.double(), centered).solution
        return 1 - float(((centered - projected.double() @ weights) ** 2).sum() / (centered**2).sum())

    compressed = pca_compress(matrix, 6)
    assert explained(compressed) == pytest.approx(float(eigen[:6].sum() / eigen.sum()), abs=1e-4)
    assert explained(centered.float() @ torch.linalg.qr(torch.randn(24, 6))[0]) < explained(compressed) - 0.1
    variances = compressed.var(0)
    assert torch.all(variances[:-1] >= variances[1:])  # largest component first
    assert torch.equal(compressed, pca_compress(matrix, 6))  # deterministic


def test_bert_and_factorized_albert_students_round_trip(tmp_path):
    teacher = _teacher()
    ids = _inputs()
    for spec, arch in ((StudentConfig(layers=2, hidden=32, heads=4), "BertForSequenceClassification"),
                       (StudentConfig(layers=2, hidden=32, heads=4, embedding_size=16), "AlbertForSequenceClassification")):
        student = build_student(spec, teacher, num_labels=2).eval()
        assert type(student).__name__ == arch
        assert student.get_input_embeddings().weight.shape == (90, spec.embedding_width)
        assert torch.allclose(student.get_input_embeddings().weight,
                              pca_compress(teacher.get_input_embeddings().weight.detach(), spec.embedding_width))
        out = tmp_path / arch
        student.save_pretrained(out, safe_serialization=True)
        assert (out / "model.safetensors").is_file()
        loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
        assert torch.equal(student(**ids).logits, loaded(**ids).logits)
        counts = param_counts(student)
        assert counts["total"] == sum(p.numel() for p in student.parameters())
        assert counts["embeddings"] + counts["encoder"] + counts["head"] == counts["total"]
    albert = build_student(StudentConfig(layers=2, hidden=32, heads=4, embedding_size=16), teacher, 2)
    bert = build_student(StudentConfig(layers=2, hidden=32, heads=4), teacher, 2)
    # factorized: V x E + E x H instead of V x H, and the blocks are unshared
    assert param_counts(albert)["embeddings"] < param_counts(bert)["embeddings"]
    assert param_counts(albert)["encoder"] == param_counts(bert)["encoder"]
    e, h, v, pos = 16, 32, 90, 32
    assert param_counts(albert)["embeddings"] == v * e + pos * e + 2 * e + 2 * e + (e * h + h)


def test_teacher_layers_and_pretrained_init_copy_blocks(tmp_path):
    teacher = _teacher(hidden=32, heads=4, layers=4)
    assert spread_layers(4, 2) == [1, 3] and spread_layers(6, 3) == [1, 3, 5]
    spec = StudentConfig(layers=2, hidden=32, heads=4, intermediate=64, init="teacher-layers", embeddings="copy")
    student = build_student(spec, teacher, 2)
    for dst, src in zip(student.bert.encoder.layer, (1, 3)):
        for a, b in zip(dst.parameters(), teacher.bert.encoder.layer[src].parameters()):
            assert torch.equal(a, b)
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    chosen = build_student(spec.model_copy(update={"init_layers": [0, 2]}), teacher, 2)
    assert torch.equal(chosen.bert.encoder.layer[1].output.dense.weight, teacher.bert.encoder.layer[2].output.dense.weight)

    teacher.bert.save_pretrained(tmp_path / "small", safe_serialization=True)  # stands in for MiniLM
    pre = StudentConfig(layers=2, hidden=32, heads=4, intermediate=64, init=f"pretrained:{tmp_path / 'small'}")
    from_disk = build_student(pre, _teacher(hidden=32, heads=4, layers=4, seed=1), 2)
    assert torch.equal(from_disk.bert.encoder.layer[0].attention.self.query.weight,
                       AutoModel.from_pretrained(tmp_path / "small").encoder.layer[1].attention.self.query.weight)
    for wrong in ({"hidden": 64, "intermediate": 128}, {"heads": 2}, {"intermediate": 128}):
        with pytest.raises(XdrayError, match="the source has hidden 32, heads 4, FFN 64"):
            build_student(spec.model_copy(update=wrong), teacher, 2)


def _cls_spread(teacher, hidden: int, init_std: float | str) -> float:
    """How much a fresh student's top [CLS] state varies across inputs, relative to its norm."""
    spec = StudentConfig(layers=2, hidden=hidden, heads=2, embeddings="random", init_std=init_std)
    student = build_student(spec, teacher, 2).eval()
    ids = torch.randint(4, 90, (64, 24), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 2  # every row starts with the same [CLS] token
    with torch.no_grad():
        cls = student(input_ids=ids, output_hidden_states=True).hidden_states[-1][:, 0]
    return float(cls.std(0).norm() / cls.mean(0).norm())


def test_init_std_width_scales_with_width_so_narrow_students_start_input_dependent():
    """BERT's fixed 0.02 leaves an H16 student's [CLS] 50x less input-dependent than an H768 one's (the
    majority-class plateau of small students); ``init_std: width`` starts every width alike."""
    teacher = _teacher()
    assert build_student(StudentConfig(hidden=192, heads=2), teacher, 2).config.initializer_range == 0.02
    wide = StudentConfig(hidden=192, heads=2, init_std="width")
    assert build_student(wide, teacher, 2).config.initializer_range == pytest.approx(0.04)
    scaled = {h: _cls_spread(teacher, h, "width") for h in (16, 768)}
    fixed = {h: _cls_spread(teacher, h, 0.02) for h in (16, 768)}
    assert 0.5 < scaled[16] / scaled[768] < 2
    assert fixed[16] / fixed[768] < 0.1
    assert fixed[768] == pytest.approx(scaled[768])  # BERT-base's width keeps BERT's init


def test_a_narrower_ffn_keeps_the_source_neurons_that_matter():
    """Half of each teacher FFN is made inert (zero input weights and bias: GELU(0) = 0); pruning to the other half
    must then reproduce the teacher exactly, and pick the neurons by weight norm, not by position."""
    teacher = _teacher(hidden=32, heads=4, layers=2)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in teacher.bert.encoder.layer:
            inert = torch.randperm(64, generator=g)[:32]
            block.intermediate.dense.weight[inert] = 0
            block.intermediate.dense.bias[inert] = 0
    spec = StudentConfig(layers=2, hidden=32, heads=4, intermediate=32, init="teacher-layers", embeddings="copy")
    student = build_student(spec, teacher, 2).eval()
    inputs = _inputs()
    with torch.no_grad():
        want = teacher.bert(**inputs).last_hidden_state
        got = student.bert(**inputs).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    live = (teacher.bert.encoder.layer[0].intermediate.dense.weight.abs().sum(1) > 0).nonzero().flatten()
    assert torch.equal(student.bert.encoder.layer[0].output.dense.weight,
                       teacher.bert.encoder.layer[0].output.dense.weight[:, live])


def test_student_config_rejects_impossible_combinations():
    with pytest.raises(ValueError, match="embedding_size"):
        StudentConfig(hidden=32, heads=4, embedding_size=64)
    with pytest.raises(ValueError, match="init"):
        StudentConfig(hidden=32, heads=4, init="magic")
    with pytest.raises(ValueError, match="needs embedding_size == hidden"):
        StudentConfig(hidden=32, heads=4, embedding_size=16, init="teacher-layers")


# ---------------------------------------------------------------------------------------------------------
# Schedule


def _stages(*raw) -> list[dict]:
    return [StageConfig(**s).model_dump() for s in raw]


def test_gradual_unfreezing_is_top_down_and_deterministic():
    stages = _stages({"name": "hidden", "data": "transfer", "loss": "hidden"},
                     {"name": "logits", "data": "transfer", "loss": "logits_mse", "unfreeze": "gradual"})
    phases = expand_stages(stages, num_layers=3)
    assert [p.name for p in phases] == ["hidden", "logits/block.2", "logits/block.1", "logits/block.0",
                                        "logits/embeddings"]
    assert phases[0].trainable is None and phases[0].monitor == "dev_loss"
    assert [p.trainable for p in phases[1:]] == [("block.2",), ("block.2", "block.1"),
                                                 ("block.2", "block.1", "block.0"),
                                                 ("block.2", "block.1", "block.0", "embeddings")]
    assert phases[1].monitor == "dev_accuracy"
    assert block_units(2, freeze_embeddings=True) == ["block.1", "block.0"]
    assert expand_stages(stages, 3, freeze_embeddings=True)[0].trainable == ("block.2", "block.1", "block.0")
    assert expand_stages(stages, 3) == phases


def _tiny_learning_problem(seed=0):
    """A teacher that separates two token sets, and batches it labels: enough signal to learn in seconds."""
    teacher = _teacher(hidden=32, heads=4, layers=2)
    g = torch.Generator().manual_seed(seed)

    def batches(n, offset):
        out = []
        for _ in range(n):
            labels = torch.randint(0, 2, (16,), generator=g)
            ids = torch.randint(4, 45, (16, 6), generator=g) + 45 * labels[:, None].clamp(max=1) * (
                torch.rand(16, 6, generator=g) < 0.7)
            ids = ids.clamp(max=89)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
            out.append(batch)
        return out

    return teacher, batches(12, 0), batches(4, 1)


def _data(teacher, train, dev, objective_for):
    def attach(batches, phase):
        objective = objective_for(phase)
        return [b | teacher_targets(teacher, b, objective) for b in batches]

    return Data(train=lambda phase, epoch, skip: attach(train, phase)[skip:], dev=lambda phase: attach(dev, phase))


def test_a_phase_that_only_hurts_dev_keeps_its_starting_weights():
    teacher, train, dev = _tiny_learning_problem()
    module = DistillModule(build_student(StudentConfig(layers=1, hidden=16, heads=2), teacher, 2), 32, 2)
    backend = TorchBackend(module, lr=1e-2)
    stages = _stages({"name": "labels", "data": "train", "loss": "ce", "epochs": 2})
    phases = expand_stages(stages, 1)

    def objective_for(phase):
        return Objective(losses=phase.losses)

    good = _data(teacher, train, dev, objective_for)
    run_schedule(backend, phases, objective_for, good, lr=1e-2)
    kept = {k: v.clone() for k, v in module.state_dict().items()}
    flipped = [b | {"labels": 1 - b["labels"]} for b in train]  # training on wrong labels can only hurt dev
    history = run_schedule(backend, phases, objective_for, _data(teacher, flipped, dev, objective_for), lr=1e-2)
    assert history[-1]["best_epoch"] == -1
    assert all(torch.equal(kept[k], v) for k, v in module.state_dict().items())
    # the step's console line says so (a Bible-pair study's corpus stages did this unnoticed, 2026-12-07)
    from xdray.pipeline import headline  # the driver's module (Ray's imports); the rest of this file needs none

    summary = {"test_accuracy": 0.5, "params": {"total": 10**6}, "history": history}
    assert headline("distill", summary).endswith("1.00M params · kept the starting weights (no epoch better on "
                                                 "dev): labels")
    assert headline("distill", summary | {"history": history[:-1]}).endswith("1.00M params")


def test_freezing_really_freezes_and_unfreezes_top_down():
    teacher, train, dev = _tiny_learning_problem()
    student = build_student(StudentConfig(layers=2, hidden=16, heads=2, intermediate=32), teacher, 2)
    module = DistillModule(student, 32, 3)
    backend = TorchBackend(module, lr=1e-2)
    names = [g["name"] for g in backend.optimizer.param_groups]
    assert list(dict.fromkeys(names)) == ["embeddings", "block.0", "block.1", "head"]
    stages = _stages({"name": "logits", "data": "transfer", "loss": "logits_mse", "unfreeze": "gradual"})
    phases = expand_stages(stages, 2)

    def objective_for(phase):
        return Objective(losses=phase.losses)

    snapshots = []
    for phase in phases:  # one optimizer step per phase, with that phase's units trainable
        set_trainable(module, backend.optimizer, phase.trainable, lr=1e-2)
        objective = objective_for(phase)
        batch = train[0] | teacher_targets(teacher, train[0], objective)
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        backend.step(objective(module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]),
                               batch)["total"])
        snapshots.append({n for n, p in module.named_parameters() if not torch.equal(before[n], p)})
    layer = "student.bert.encoder.layer"
    assert any(n.startswith(f"{layer}.1.") for n in snapshots[0])
    assert not any(n.startswith((f"{layer}.0.", "student.bert.embeddings")) for n in snapshots[0])
    assert any(n.startswith(f"{layer}.0.") for n in snapshots[1])
    assert not any(n.startswith("student.bert.embeddings") for n in snapshots[1])
    assert any(n.startswith("student.bert.embeddings") for n in snapshots[2])
    assert all(any(n.startswith("student.classifier") for n in s) for s in snapshots)


def test_progressive_run_improves_dev_loss_and_restores_the_best_dev_epoch():
    teacher, train, dev = _tiny_learning_problem()
    student = build_student(StudentConfig(layers=2, hidden=16, heads=2, intermediate=32), teacher, 2)
    module = DistillModule(student, 32, 3)
    backend = TorchBackend(module, lr=5e-3)
    stages = _stages(
        {"name": "hidden", "data": "transfer", "loss": "hidden", "epochs": 3},
        {"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": 2, "unfreeze": "gradual",
         "monitor": "dev_loss"},
        {"name": "labels", "data": "train", "loss": "ce", "epochs": 4, "patience": 1},
    )
    phases = expand_stages(stages, 2)

    def objective_for(phase):
        return Objective(losses=phase.losses, layer_map=tuple(L.layer_map(2, 2)))

    data = _data(teacher, train, dev, objective_for)
    from xdray.distill.schedule import evaluate

    start = {p.name: evaluate(backend, objective_for(p), data.dev(p))["loss"] for p in (phases[0], phases[1])}
    history = run_schedule(backend, phases, objective_for, data, lr=5e-3)
    by_phase = {}
    for record in history:
        by_phase.setdefault(record["stage"], []).append(record)
    # every phase ends on its best dev epoch (restored), and the representation and logit stages improved dev loss
    for records in by_phase.values():
        best = records[-1]["best_epoch"]
        key = "dev_accuracy" if records[0]["monitor"] == "dev_accuracy" else "dev_loss"
        values = [r[key] for r in records]
        if best >= 0:  # -1 would mean the phase kept the weights it started from
            assert values[best] == (max(values) if key == "dev_accuracy" else min(values))
    assert min(r["dev_loss"] for r in by_phase["hidden"]) < start["hidden"]
    assert min(r["dev_loss"] for r in by_phase["logits/embeddings"]) < start["logits/block.1"]
    phase, labels = phases[-1], by_phase["labels"]
    final = evaluate(backend, objective_for(phase), data.dev(phase))["accuracy"]
    assert final >= max(r["dev_accuracy"] for r in labels) - 1e-9  # the best epoch, or better starting weights
    if labels[-1]["best_epoch"] >= 0:
        assert final == pytest.approx(labels[labels[-1]["best_epoch"]]["dev_accuracy"])
    assert len(by_phase["labels"]) <= 4


def test_param_groups_cover_every_parameter_once():
    teacher = _teacher()
    module = DistillModule(build_student(StudentConfig(layers=3, hidden=32, heads=4, embedding_size=16), teacher, 2),
                           48, 4)
    groups = param_groups(module)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(module.parameters()))
    assert list(dict.fromkeys(g["name"] for g in groups)) == ["embeddings", "block.0", "block.1", "block.2", "head"]
    head = {id(p) for g in groups if g["name"] == "head" for p in g["params"]}
    assert all(id(p) in head for p in module.projections.parameters())
    # Hugging Face's convention: no weight decay on biases and norm weights, decay on every other weight
    names = {id(p): n for n, p in module.named_parameters()}
    exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert exempt and all(n.endswith("bias") or "norm" in n.lower() for n in exempt)
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert any(n.endswith("query.weight") for n in decayed) and any(n.startswith("projections") for n in decayed)
    assert not any(n.endswith("bias") or "norm" in n.lower() for n in decayed)


@pytest.mark.parametrize("grad_accum", [1, 5])
def test_a_schedule_resumed_from_any_checkpoint_ends_exactly_like_the_uninterrupted_run(grad_accum):
    """Checkpoint → resume restores the stage, the unfrozen units, early stopping, the data position and the
    RNG: the resumed runs (mid-phase, and at a phase boundary) end with the same weights and records."""
    teacher, train, dev = _tiny_learning_problem()
    stages = _stages(
        {"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": 2, "unfreeze": "gradual"},
        {"name": "labels", "data": "train", "loss": "ce", "epochs": 3, "patience": 1},
    )
    phases = expand_stages(stages, 2)

    def objective_for(phase):
        return Objective(losses=phase.losses)

    def backend():
        torch.manual_seed(0)
        student = build_student(StudentConfig(layers=2, hidden=16, heads=2, intermediate=32), teacher, 2, seed=0)
        return TorchBackend(DistillModule(student, 32, 0), lr=5e-3, grad_accum=grad_accum)

    snapshots = []

    def keep(backend_, pos):
        snapshots.append(copy.deepcopy((pos.state(), backend_.model.state_dict(), backend_.optimizer.state_dict(),
                                        backend_._saved, torch.get_rng_state())))

    data = _data(teacher, train, dev, objective_for)
    first = backend()
    history = run_schedule(first, phases, objective_for, data, lr=5e-3, warmup_steps=4,
                           checkpoint_every=5 // grad_accum, on_checkpoint=lambda pos: keep(first, pos))
    mid = next(s for s in snapshots if s[0]["batch"] and s[0]["phase"] == 1)
    boundary = next(s for s in snapshots if s[0]["best"] is None and s[0]["phase"] == 2)
    for state, model_state, optimizer_state, saved, rng in (mid, boundary):
        again = backend()
        again.model.load_state_dict(model_state)
        again.optimizer.load_state_dict(optimizer_state)
        again._saved, _ = saved, torch.set_rng_state(rng)
        resumed = run_schedule(again, phases, objective_for, data, lr=5e-3, warmup_steps=4, resume=state)
        assert [(r["stage"], r["trained_units"], r["best_epoch"] if "best_epoch" in r else None) for r in resumed] == \
            [(r["stage"], r["trained_units"], r["best_epoch"] if "best_epoch" in r else None) for r in history]
        assert [r["dev_loss"] for r in resumed] == [r["dev_loss"] for r in history]
        final = first.model.state_dict()
        assert all(torch.equal(final[k], v) for k, v in again.model.state_dict().items())
