"""GPU smoke run: xdray's worker pieces on one GPU, without Ray, in one command of a few minutes.

The device machine has CUDA torch and transformers but no Ray, MLflow or DeepSpeed, so this drives the pieces
the Ray actors and workers run, directly: the labelling actor's class (``ChunkLabeler``) on CUDA in bf16 with a
BERT-large-shaped, randomly initialised teacher; the progressive schedule (hidden, then logits) on a DeepSpeed
bf16 engine (NCCL, one rank) training an L6-H384 student on those labels; the exported student's latency on the
device. Prints one JSON line:

    gpu, label_tokens_per_s, label_mfu, distill_samples_per_s, distill_mfu, latency_ms_<device> (per batch
    size), student_dtype_saved, seconds

MFU is against the device's dense bf16 peak (datasheet; ``--peak-tflops`` for another GPU), with FLOPs counted
from the model shapes: a forward pass is 2 x (non-embedding weights) + 4 x layers x seq x hidden (attention
scores and values) per token; a training step is 3 forwards. ``--device cpu`` runs tiny shapes on the CPU
(DeepSpeed's CPU accelerator, gloo), which is how the test suite runs it. On the device machine, after
``bash bench/gpu_carry.sh`` here (DeepSpeed and pydantic wheels into ``bench/.carry``):

    PYTHONPATH=bench/.carry/site:. python bench/gpu_smoke.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks (no sparsity), from NVIDIA's datasheets.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "A100": 312.0, "L4": 121.0}


@dataclass(frozen=True)
class Shapes:
    teacher: dict
    student: dict
    max_length: int
    rows: int
    label_batch: int
    train_batch: int


SHAPES = {
    "cuda": Shapes(teacher=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
                   student=dict(layers=6, hidden=384, heads=12), max_length=128, rows=16384, label_batch=256,
                   train_batch=128),
    "cpu": Shapes(teacher=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
                  student=dict(layers=1, hidden=32, heads=2), max_length=32, rows=256, label_batch=64, train_batch=32),
}


def sentences(n: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnoprstuvwy") for _ in range(rng.randint(2, 7))) for _ in range(4000)]
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]


def build_teacher(directory: Path, shapes: Shapes, texts: list[str]) -> Path:
    """A random BERT classifier of the given shape with a WordPiece tokenizer trained on ``texts``."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts[:2000], vocab_size=8000, min_frequency=1)
    directory.mkdir(parents=True)
    wordpiece.save_model(str(directory))
    tokenizer = BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, num_labels=2, **shapes.teacher)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def forward_flops_per_token(model: torch.nn.Module, seq: int) -> float:
    cfg = model.config
    weights = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n and p.dim() > 1)
    return 2.0 * weights + 4.0 * cfg.num_hidden_layers * seq * cfg.hidden_size


def init_single_rank(device: str) -> None:
    """One-rank torch.distributed, as DeepSpeed expects (NCCL on the GPU, gloo on the CPU)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")


def label(teacher_dir: Path, shapes: Shapes, texts: list[str], threads: int):
    """The labelling actor's work in bf16; returns the labelled table and tokens/s, padded tokens/s."""
    import pyarrow as pa

    from xdray.distill.losses import layer_map
    from xdray.label.labeler import ChunkLabeler

    hidden = layer_map(shapes.student["layers"], shapes.teacher["num_hidden_layers"])
    labeller = ChunkLabeler(str(teacher_dir), shapes.max_length, threads, shapes.label_batch, hidden_layers=hidden,
                            precision="bf16")
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    labeller.label_table(table.slice(0, shapes.label_batch))  # warm-up: kernels, allocator
    _sync()
    t0 = time.perf_counter()
    labelled, stats = labeller.label_table(table)
    _sync()
    seconds = time.perf_counter() - t0
    flops = forward_flops_per_token(labeller.model, shapes.max_length) * stats["padded_tokens"]
    return labelled, stats["tokens"] / seconds, flops / seconds, labeller.model


def distill(teacher, tokenizer, labelled, shapes: Shapes, device: str, scratch: Path):
    """Hidden then logits stages of the schedule on a bf16 DeepSpeed engine; returns samples/s, FLOP/s, student."""

    from xdray.config import StageConfig, StudentConfig
    from xdray.distill.batches import collate, table_batches
    from xdray.distill.losses import layer_map
    from xdray.distill.objective import DistillModule, Objective
    from xdray.distill.schedule import Data, expand_stages, run_schedule
    from xdray.distill.student import build_student
    from xdray.train.engine import DeepSpeedBackend, TrainSpec, build_engine

    student_cfg = StudentConfig(**shapes.student)
    mapping = tuple(layer_map(student_cfg.layers, teacher.config.num_hidden_layers))
    student = build_student(student_cfg, teacher.float().cpu(), 2, seed=0)
    module = DistillModule(student, teacher.config.hidden_size, len(mapping))
    stages = [StageConfig(name="hidden", data="transfer", loss="hidden", epochs=1).model_dump(),
              StageConfig(name="logits", data="transfer", loss="logits_mse", epochs=1).model_dump()]
    spec = TrainSpec(role="student", init="", stages=stages, num_labels=2, max_length=shapes.max_length,
                     batch_size=shapes.train_batch, lr=1e-4, grad_accum=1, scratch=str(scratch), dev=None,
                     deepspeed={"zero_stage": 0, "precision": "bf16", "grad_clip": 1.0, "offload_optimizer": False,
                                "train_batch_size": None})
    engine = build_engine(module, spec, 1)
    train_rows, dev_rows = labelled.slice(0, labelled.num_rows - shapes.train_batch), labelled.slice(
        labelled.num_rows - shapes.train_batch)

    def batches(table):
        return [collate(raw, tokenizer, shapes.max_length, engine.device) for raw in table_batches(table, shapes.train_batch)]

    train, dev = batches(train_rows), batches(dev_rows)

    def objective_for(phase):
        return Objective(losses=phase.losses, layer_map=mapping, temperature=phase.temperature)

    records = []
    run_schedule(DeepSpeedBackend(engine, str(scratch), False), expand_stages(stages, student_cfg.layers),
                 objective_for, Data(train=lambda phase, epoch, skip: train[skip:], dev=lambda phase: dev), spec.lr,
                 on_epoch=records.append)
    last = records[-1]  # the logits stage: kernels and allocator warm from the hidden stage
    samples_per_s = last["samples"] / last["seconds"]
    flops = 3 * forward_flops_per_token(student, shapes.max_length) * shapes.max_length * samples_per_s
    return samples_per_s, flops, engine.module.student


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU, if not in the table")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: no CUDA device; fix: run it on a GPU machine or pass --device cpu")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # ChunkLabeler takes a GPU whenever one is visible
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    shapes = SHAPES[args.device]
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu and k in gpu), None)
    init_single_rank(args.device)

    from transformers import AutoTokenizer

    from xdray.common.latency import latency_ms
    from xdray.train.engine import save_fp32

    with tempfile.TemporaryDirectory() as tmp:
        texts = sentences(shapes.rows, shapes.max_length)  # more words than tokens: every row fills max_length
        teacher_dir = build_teacher(Path(tmp) / "teacher", shapes, texts)
        threads = max(1, (os.cpu_count() or 2) // 2)
        labelled, tokens_per_s, label_flops, teacher = label(teacher_dir, shapes, texts, threads)
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        samples_per_s, distill_flops, student = distill(teacher, tokenizer, labelled, shapes, args.device,
                                                        Path(tmp) / "scratch")
        student_dir = Path(tmp) / "student"
        save_fp32(student, str(student_dir))
        tokenizer.save_pretrained(student_dir)
        saved = json.loads((student_dir / "config.json").read_text())["dtype"]
        latency = latency_ms(student_dir, texts[:64], shapes.max_length, [1, 32], threads=1, device=args.device)

    def mfu(flops: float) -> float | None:
        return round(flops / (peak * 1e12), 4) if peak else None

    print(json.dumps({
        "gpu": gpu, "device": args.device, "label_tokens_per_s": round(tokens_per_s, 1), "label_mfu": mfu(label_flops),
        "distill_samples_per_s": round(samples_per_s, 1), "distill_mfu": mfu(distill_flops),
        f"latency_ms_{args.device}": {f"b{b}": round(v, 4) for b, v in latency.items()},
        "student_dtype_saved": saved, "peak_bf16_tflops": peak,
        "teacher": shapes.teacher, "student": shapes.student, "max_length": shapes.max_length, "rows": shapes.rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
