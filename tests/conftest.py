"""Shared fixtures: one local Ray for the whole session, and a tiny task with a tiny locally built teacher.

Nothing here touches the Hugging Face Hub: the backbone is a 2-layer BERT built from a config, with a
WordPiece vocabulary built from the test's corpus.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Train's controller takes one result per worker every 2 s by default and a worker's next report waits for
# it; the tiny test runs report every few steps, so that wait was much of their time. Child processes (the CLI,
# `ray start`, job drivers) inherit it. A missed poll is tolerated for 10 minutes, so a loaded machine is safe.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests use their own stores

POSITIVE = ["great", "wonderful", "moving", "brilliant", "charming", "superb", "delightful", "funny"]
NEGATIVE = ["dull", "boring", "awful", "clumsy", "tedious", "bland", "painful", "weak"]
NOUNS = ["film", "movie", "story", "cast", "script", "ending", "plot", "score"]


def _sentence(rng: random.Random, positive: bool) -> str:
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    noun = rng.choice(NOUNS)
    extra = rng.choice(["", " and the rest follows", " from start to finish", " for most of its length"])
    return rng.choice(["the {n} is {a}{e}", "a {a} {n}{e}", "what a {a} {n}", "i found the {n} {a}{e}"]).format(
        n=noun, a=adjective, e=extra
    )


def write_task(root: Path, n_train: int = 240, n_dev: int = 60, n_test: int = 60, n_transfer: int = 300) -> dict:
    """A small, learnable binary sentiment task plus an unlabeled transfer corpus with some duplicates."""
    from xdray.data.tables import LabeledSplit, write_labeled

    rng = random.Random(0)
    paths = {}
    for name, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        labels = [i % 2 for i in range(n)]
        write_labeled(root / f"{name}.tsv", LabeledSplit([_sentence(rng, bool(y)) for y in labels], labels))
        paths[name] = root / f"{name}.tsv"
    lines = [_sentence(rng, rng.random() < 0.5) for _ in range(n_transfer)] + ["", "   "]
    (root / "transfer.txt").write_text("\n".join(lines) + "\n")
    paths["transfer"] = root / "transfer.txt"
    return paths


def tiny_vocabulary(corpus: list[str], size: int = 200) -> list[str]:
    """A WordPiece vocabulary that is the same in every process: the special tokens, every character alone and as
    a ``##`` continuation, then whole words by falling count (ties alphabetical) up to ``size``. HF's WordPiece
    trainer is not (its token set and ids varied between three processes on one corpus), which made the tiny
    teachers' learning, and so the thresholds of the tests that train them, vary from run to run."""
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalize, split = BertNormalizer(lowercase=True), BertPreTokenizer()
    words = Counter(word for line in corpus
                    for word, _ in split.pre_tokenize_str(normalize.normalize_str(line)))
    chars = sorted({c for word in words for c in word})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    ranked = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    return vocab + ranked[: max(0, size - len(vocab))]


def build_tiny_backbone(directory: Path, corpus: list[str]) -> Path:
    """A 2-layer, hidden-32 BERT encoder and a WordPiece tokenizer over ``corpus``, saved as an HF dir."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(tiny_vocabulary(corpus)) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True)
    assert tokenizer.vocab_size > 50, "the tokenizer lost its vocabulary (only special tokens)"
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    torch.manual_seed(0)  # with the fixed vocabulary, the same tiny model in every run
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("task")
    paths = write_task(root)
    corpus = (root / "transfer.txt").read_text().splitlines() + (root / "train.tsv").read_text().splitlines()
    paths["backbone"] = build_tiny_backbone(root / "backbone", corpus)
    return paths


def pytest_sessionfinish(session, exitstatus):
    session.config.xdray_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Exit with pytest's status once its report is out, skipping the interpreter's teardown: on 2026-12-06 a
    fresh-clone `make test` passed all 290 tests and then died of SIGSEGV in that teardown (native threads of the
    libraries the in-process tests load: Ray's driver, DeepSpeed, ONNX Runtime, MLflow), which turned a green run
    red. Each CLI's own exit is tested in a subprocess (tests/test_label.py, tests/test_cluster.py)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(getattr(config, "xdray_exitstatus", 0))


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for every test that needs one (the machine fits only one)."""
    import ray

    ray.init(address="local", num_cpus=4, log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_config(task: dict, output_dir: Path, **sections) -> dict:
    """A raw config dict for the tiny task (validated by the caller), fast enough for CI."""
    cfg = {
        "output_dir": str(output_dir),
        "mlflow": {"experiment": "xdray-test"},
        "data": {
            "train": str(task["train"]), "dev": str(task["dev"]), "test": str(task["test"]),
            "transfer": [str(task["transfer"])], "max_length": 16,
        },
        "teacher": {"backbone": str(task["backbone"]), "epochs": 4, "lr": 2.0e-3, "batch_size": 16},
        "label": {"batch_size": 32, "actors": 2, "cpus_per_actor": 0.5},
        "distill": {
            "student": {"layers": 1, "hidden": 16, "heads": 2},
            "stages": [  # the paper's schedule, in small
                {"name": "hidden", "data": "transfer", "loss": "hidden", "epochs": 2},
                {"name": "logits", "data": "transfer", "loss": "logits_mse", "epochs": 3, "unfreeze": "gradual"},
                {"name": "labels", "data": "train", "loss": "ce", "epochs": 1},
            ],
            "workers": 2, "batch_size": 16, "lr": 5.0e-3,
        },
        "search": {  # both depths, in this order: the points are evaluated first
            "space": {"layers": [1, 2], "hidden": [16], "heads": [2]}, "num_samples": 2, "max_concurrent_trials": 2,
            "points_to_evaluate": [{"layers": 1, "hidden": 16, "heads": 2}, {"layers": 2, "hidden": 16, "heads": 2}],
            "latency": {"sentences": 16},
        },
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
