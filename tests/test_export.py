"""Export without Ray: tiny BERT, factorized ALBERT, token and pair models to ONNX and int8, loaded in ONNX Runtime
at shapes other than the traced one, and checked against torch on their rows; and the one-line errors of a bad
export config or model directory. The step end to end (latency, MLflow, the registry) runs in the pipeline and
transfer tests."""

from __future__ import annotations

import json
import random

import numpy as np
import onnx
import pytest
import torch
import yaml
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizerFast,
)

from xdray.cli import main
from xdray.common.tracking import Tracker
from xdray.config import ConfigError, load_config, validate_config
from xdray.errors import XdrayError
from xdray.export.onnx import OrtClassifier, export_onnx, quantize_int8
from xdray.export.parity import compare_variants
from xdray.export.run import load_model, run_export
from xdray.transfer.tasks import TaskData

from .conftest import _sentence, tiny_config

KINDS = ("bert", "albert", "token", "pair")


def tiny_model(kind: str, vocab: int):
    torch.manual_seed(0)
    shape = dict(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=64)
    if kind == "albert":
        config = AlbertConfig(embedding_size=8, num_hidden_groups=2, inner_group_num=1, num_labels=3, **shape)
        return AlbertForSequenceClassification(config)
    if kind == "token":
        return BertForTokenClassification(BertConfig(num_labels=5, **shape))
    return BertForSequenceClassification(BertConfig(num_labels=2, type_vocab_size=2, **shape))


def tiny_rows(kind: str, n: int = 40) -> TaskData:
    rng = random.Random(3)
    if kind == "token":
        rows = [{"tokens": _sentence(rng, i % 2 == 0).split(), "tags": None} for i in range(n)]
        for row in rows:
            row["tags"] = [rng.randrange(5) for _ in row["tokens"]]
        return TaskData("token_classification", [], rows[: n // 2], rows[n // 2:], [f"T{i}" for i in range(5)])
    rows = [{"text": _sentence(rng, i % 2 == 0), "label": i % (3 if kind == "albert" else 2)} for i in range(n)]
    if kind == "pair":
        for row in rows:
            row["text_pair"] = _sentence(rng, rng.random() < 0.5)
    names = [str(i) for i in range(3 if kind == "albert" else 2)]
    return TaskData("pair_classification" if kind == "pair" else "classification", [], rows[: n // 2], rows[n // 2:],
                    names)


@pytest.fixture(scope="module")
def tokenizer(tiny_task):
    return BertTokenizerFast.from_pretrained(tiny_task["backbone"])


@pytest.fixture(scope="module", params=KINDS)
def exported(request, tokenizer, tmp_path_factory):
    kind = request.param
    model = tiny_model(kind, tokenizer.vocab_size).eval()
    root = tmp_path_factory.mktemp(f"export-{kind}")
    graph = export_onnx(model, tokenizer, root / "model.onnx", ["a long sentence of many words here", "short"],
                        kind == "token", 17)
    quantize_int8(root / "model.onnx", root / "model.int8.onnx", "int8", False, False, ["MatMul"])
    return kind, model, root, graph


def test_the_graph_has_dynamic_batch_and_sequence_axes_and_runs_at_other_shapes(exported, tokenizer):
    kind, model, root, graph = exported
    assert graph["opset"] == 17 and graph["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    proto = onnx.load(str(root / "model.onnx"))
    for i in proto.graph.input:
        assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"], i.name
    embeddings = [list(w.dims) for w in proto.graph.initializer if w.dims and w.dims[0] == tokenizer.vocab_size]
    assert embeddings == [[tokenizer.vocab_size, 8 if kind == "albert" else 16]]  # ALBERT's stays V×E, not V×H
    session = OrtClassifier(root / "model.onnx")
    for batch, length in ((1, 5), (3, 37)):
        enc = {"input_ids": torch.randint(5, tokenizer.vocab_size, (batch, length)),
               "attention_mask": torch.ones(batch, length, dtype=torch.long),
               "token_type_ids": torch.zeros(batch, length, dtype=torch.long)}
        enc["attention_mask"][-1, length // 2:] = 0  # a padded row
        enc["token_type_ids"][:, length // 3:] = 1 if kind == "pair" else 0
        with torch.no_grad():
            want = model(**enc).logits
        got = session(**enc)
        assert got.shape == want.shape
        keep = enc["attention_mask"].bool() if kind == "token" else slice(None)
        assert (got - want).abs()[keep].max() <= 1e-4


def test_fp32_matches_torch_on_the_rows_and_int8_runs(exported, tokenizer):
    kind, model, root, _ = exported
    data = tiny_rows(kind)
    variants = {"torch_fp32": model, "onnx_fp32": OrtClassifier(root / "model.onnx"),
                "onnx_int8": OrtClassifier(root / "model.int8.onnx")}
    checked = compare_variants(variants, data, tokenizer, 32)
    for split in ("dev", "test"):
        assert checked["max_abs_diff"]["onnx_fp32"][split] <= 1e-4
        assert checked["metrics"]["onnx_fp32"][split] == checked["metrics"]["torch_fp32"][split]
        assert 0 < checked["max_abs_diff"]["onnx_int8"][split] < 1  # quantized: close, not equal
    ops = {n.op_type for n in onnx.load(str(root / "model.int8.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops or "DynamicQuantizeMatMul" in ops, ops


# ---------------------------------------------------------------------------------------------------------
# Bad config and bad model directories: one line each


def _export_job(tiny_task, tmp_path, **export) -> str:
    raw = tiny_config(tiny_task, tmp_path / "out") | {"export": export}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    return str(job)


def _one_line_error(capsys, argv) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return rc, err


def test_a_missing_model_directory_is_one_line_before_ray(tiny_task, tmp_path, capsys):
    rc, err = _one_line_error(capsys, ["export", _export_job(tiny_task, tmp_path)])
    assert rc == 2 and "export.model" in err and "distill/student/config.json" in err, err


def test_a_corrupt_model_directory_is_one_line(tiny_task, tmp_path, capsys):
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text("{ not json")
    rc, err = _one_line_error(capsys, ["export", _export_job(tiny_task, tmp_path, model=str(model))])
    assert rc == 2 and "config.json" in err and "not valid JSON" in err, err
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    (model / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(XdrayError, match=r"^export.model: cannot load the model in .*fix: "):
        load_model(model, {"type": "classification", "num_labels": 2, "names": None})


def test_an_unknown_export_model_or_data_is_one_line(tiny_task, tmp_path, capsys):
    rc, err = _one_line_error(capsys, ["export", _export_job(tiny_task, tmp_path, model="distil")])
    assert rc == 2 and "export.model" in err and "'distil' is not known" in err, err
    rc, err = _one_line_error(capsys, ["export", _export_job(tiny_task, tmp_path, model="transfer/ner")])
    assert rc == 2 and "no such transfer task" in err, err
    rc, err = _one_line_error(capsys, ["export", _export_job(tiny_task, tmp_path, data="movies")])
    assert rc == 2 and "export.data" in err, err
    with pytest.raises(ConfigError, match="export.int8.weight_type"):
        validate_config(tiny_config(tiny_task, tmp_path) | {"export": {"int8": {"weight_type": "int4"}}})
    with pytest.raises(ConfigError, match="export.atol"):
        validate_config(tiny_config(tiny_task, tmp_path) | {"export": {"atol": 0}})


def test_an_export_that_misses_fp32_parity_fails_and_keeps_the_earlier_one(tiny_task, tokenizer, tmp_path):
    model_dir = tmp_path / "student"
    tiny_model("bert", tokenizer.vocab_size).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    earlier = tmp_path / "out" / "export" / "model"
    earlier.mkdir(parents=True)
    (earlier / "model.onnx").write_bytes(b"the earlier export")
    cfg = load_config(_export_job(tiny_task, tmp_path, model=str(model_dir), atol=1e-12))
    with pytest.raises(XdrayError, match=r"^export: ONNX fp32 logits differ from torch by .* > export.atol=1e-12; "
                                         r"the earlier export is kept; fix: "):
        run_export(cfg, Tracker.for_config(cfg))
    assert (earlier / "model.onnx").read_bytes() == b"the earlier export"
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["model"]  # no staging folder left behind
    assert not (tmp_path / "out" / "export" / "summary.json").exists()


def test_every_step_model_keyword_resolves_to_its_directory(tiny_task, tmp_path):
    cfg = load_config(_export_job(tiny_task, tmp_path, model="search"))
    assert cfg.export_model == (cfg.output_dir / "search" / "best_student", "source")
    cfg = load_config(_export_job(tiny_task, tmp_path))
    assert cfg.export_model == (cfg.output_dir / "distill" / "student", "source")
    assert np.isclose(cfg.export.atol, 1e-4) and cfg.export.int8.ops == ["MatMul"]
