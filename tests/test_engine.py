"""The DeepSpeed engine the workers build, in one process (gloo, world size 1): the config xdray derives really
engages ZeRO-Offload and gradient accumulation, and freezing is real under ZeRO 0, 2 and 3."""

from __future__ import annotations

import os
import socket
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
from transformers import BertConfig, BertModel

from xdray.config import StageConfig, StudentConfig
from xdray.distill.objective import DistillModule, Objective
from xdray.distill.schedule import Data, expand_stages, run_schedule
from xdray.distill.student import build_student
from xdray.distill.units import set_trainable, unit_parameters
from xdray.train.engine import DeepSpeedBackend, TrainSpec, build_engine


@pytest.fixture(scope="module")
def deepspeed():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    yield deepspeed
    dist.destroy_process_group()


def tiny_module() -> DistillModule:
    torch.manual_seed(0)
    teacher = BertModel(BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=16))
    return DistillModule(build_student(StudentConfig(layers=2, hidden=16, heads=2), teacher, 2), 32, 0)


def engine_for(zero: dict, world_size: int = 1, **ds):
    spec = TrainSpec(role="student", init="", stages=[], num_labels=2, max_length=16, batch_size=4, lr=1e-2,
                     deepspeed={"zero_stage": 2, "precision": "fp32", "grad_clip": 1.0, "offload_optimizer": False,
                                "train_batch_size": None, **zero},
                     scratch="", dev=None, **({"grad_accum": 1} | ds))
    return build_engine(tiny_module(), spec, world_size)


def batch(seed: int) -> dict:
    ids = torch.randint(4, 90, (4, 8), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 0, 1])}


def micro_step(engine, seed: int = 0) -> None:
    b = batch(seed)
    out = engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    engine.backward(Objective(losses=("ce",))(out, b)["total"])
    engine.step()


def snapshot(engine) -> dict:
    return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def optimizer_state(engine) -> dict:
    """Each unit's master weights and AdamW moments as the optimizer holds them: flat fp32 partitions under ZeRO
    (ZeRO-3 hands them to the optimizer only while it steps), the parameters themselves under ZeRO-0."""
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    if engine.zero_optimization_stage() == 3:
        zero = engine.optimizer
        flat = [(base.param_groups[zero.sub_group_to_group_id[i]]["name"], p)
                for i, p in enumerate(zero.fp32_partitioned_groups_flat)]
    else:
        flat = [(group["name"], p) for group in base.param_groups for p in group["params"]]
    return {(name, i): [p.detach().clone()] + [base.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq", "step")
                                               if k in base.state.get(p, {})]
            for i, (name, p) in enumerate(flat)}


def test_offload_and_accumulation_are_engaged_and_frozen_blocks_stay_put(deepspeed):
    engine = engine_for({"offload_optimizer": True}, grad_accum=2)
    assert engine.zero_optimization_stage() == 2 and engine.zero_cpu_offload()
    assert engine.gradient_accumulation_steps() == 2 and engine.train_batch_size() == 8
    set_trainable(engine.module, engine.optimizer, ("block.1",), lr=1e-2)  # block.0 and the embeddings frozen
    before = snapshot(engine)
    micro_step(engine)
    assert all(torch.equal(before[n], p) for n, p in engine.module.named_parameters())  # mid-accumulation
    micro_step(engine)
    changed = {n for n, p in engine.module.named_parameters() if not torch.equal(before[n], p)}
    layer = "student.bert.encoder.layer"
    assert any(n.startswith(f"{layer}.1.") for n in changed) and any("classifier" in n for n in changed)
    assert not any(n.startswith((f"{layer}.0.", "student.bert.embeddings")) for n in changed)


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_frozen_units_keep_weights_and_adamw_moments_bit_identical_and_stay_out_of_the_clip_norm(deepspeed, stage):
    """One step with every unit trained (AdamW then has moments for all), then steps with only block.1 and the
    head: the frozen units' master weights, moments and step counts do not move at all, their parameters get no
    gradient, and the clip norm DeepSpeed measures is the norm of the trainable gradients alone."""
    engine = engine_for({"zero_stage": stage})
    engine.eval()  # no dropout: the reference gradient below must see the same function
    set_trainable(engine.module, engine.optimizer, None, lr=1e-2)
    micro_step(engine, seed=1)
    assert set_trainable(engine.module, engine.optimizer, ("block.1",), lr=1e-2) == ["block.1", "head"]
    before, weights = optimizer_state(engine), gathered(deepspeed, engine)
    b = batch(2)
    out = engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    engine.backward(Objective(losses=("ce",))(out, b)["total"])
    if stage == 0:  # ZeRO-0 clips module.parameters(), which skips parameters without a gradient
        frozen = [p for n, p in engine.module.named_parameters() if ".layer.0." in n or ".embeddings." in n]
        assert frozen and all(p.grad is None for p in frozen)
    engine.step()
    norm = engine.get_global_grad_norm()
    micro_step(engine, seed=3)
    after = optimizer_state(engine)
    moved = {key[0] for key in before if not all(torch.equal(x, y) for x, y in zip(before[key], after[key]))}
    assert moved == {"block.1", "head"}
    assert all(len(kept) == 4 for kept in after.values())  # weights, both moments, step: all from the first step

    reference = tiny_module()  # the same weights in plain torch, every parameter trainable
    reference.load_state_dict(weights)
    reference.eval()
    Objective(losses=("ce",))(reference(input_ids=b["input_ids"], attention_mask=b["attention_mask"]),
                              b)["total"].backward()
    units = unit_parameters(reference)
    grads = [p.grad for unit in ("block.1", "head") for _, p, _ in units[unit]]
    trainable_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    every_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                             for p in reference.parameters()])))
    assert every_norm > trainable_norm * 1.01  # the frozen gradients would have counted
    if stage:  # ZeRO's optimizers report the norm of their flat gradients (ZeRO-0 records none)
        assert norm == pytest.approx(trainable_norm, rel=1e-4)


def gathered(deepspeed, engine) -> dict:
    """The module's full weights (ZeRO-3 partitions them: gather first)."""
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params) if engine.zero_optimization_stage() == 3 else nullcontext():
        return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


_REALLOCATE = _REALLOCATE = """
import resource, sys, torch
from xdray.common.memory import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
buffer = torch.ones(16 * 2**20)  # 64 MiB: above glibc's largest mmap threshold; faulted in, then freed
del buffer
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffer = torch.ones(15 * 2**20)  # 60 MiB: fits in the freed block if it was kept
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_training_workers_keep_large_freed_buffers_instead_of_faulting_them_in_again():
    """``worker_loop`` calls ``keep_freed_memory``: a 60 MiB buffer allocated after a 64 MiB one was freed
    reuses its memory without new page faults, where glibc's default unmaps the freed block and faults in all
    15k pages of the new one."""
    import subprocess
    import sys

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _REALLOCATE, mode], capture_output=True, text=True, check=True)
        took, count = out.stdout.split()
        return took, int(count)

    pages = 15 * 2**20 * 4 // 4096
    took, kept = faults("keep")
    assert took == "True" and kept < pages // 10
    assert faults("default")[1] > pages // 2


def test_every_epoch_ends_on_an_optimizer_step_and_steps_count_updates(deepspeed, tmp_path):
    """grad_accum 3 over 8 micro-batches an epoch: two updates of 3, the 2 left over dropped, so nothing leaks
    into the next epoch (DeepSpeed's own micro-step counter would carry them: 16 micro-batches = 5 updates).
    Warmup and the logged step count updates."""
    engine = engine_for({"zero_stage": 2}, grad_accum=3)
    backend = DeepSpeedBackend(engine, str(tmp_path), sharded_dev=False)
    train, dev = [batch(i) for i in range(8)], [batch(100)]
    stages = [StageConfig(name="labels", data="train", loss="ce", epochs=2).model_dump()]
    lrs = []

    def on_step(phase, step, parts):
        lrs.append((step, engine.global_steps, engine.optimizer.param_groups[0]["lr"]))

    history = run_schedule(backend, expand_stages(stages, 2), lambda phase: Objective(losses=phase.losses),
                           Data(train=lambda phase, epoch, skip: train[skip:], dev=lambda phase: dev), lr=1e-2,
                           on_step=on_step, warmup_steps=2)
    assert [r["step"] for r in history] == [2, 4]
    assert [r["samples"] for r in history] == [24, 24] and [r["tokens"] for r in history] == [192, 192]
    assert lrs == [(1, 1, 5e-3), (2, 2, 1e-2), (3, 3, 1e-2), (4, 4, 1e-2)]  # DeepSpeed's updates = ours


_TWO_RANKS = """
import json, os, sys
os.environ.update(DS_ACCELERATOR="cpu", RANK=sys.argv[1], LOCAL_RANK=sys.argv[1], WORLD_SIZE="2")
import deepspeed
deepspeed.init_distributed(dist_backend="gloo")
from tests.test_engine import batch, engine_for
from xdray.config import StageConfig
from xdray.distill.objective import Objective
from xdray.distill.schedule import Data, expand_stages, run_schedule
from xdray.train.engine import DeepSpeedBackend
rank = int(sys.argv[1])
engine = engine_for({"zero_stage": 2}, world_size=2)
train = [batch(10 * rank + i) for i in range(3)]  # each rank its own batches
stages = [StageConfig(name="labels", data="train", loss="ce", epochs=1).model_dump()]
losses = []
record = run_schedule(DeepSpeedBackend(engine, sys.argv[2], sharded_dev=False), expand_stages(stages, 2),
                      lambda phase: Objective(losses=phase.losses),
                      Data(train=lambda phase, epoch, skip: train[skip:], dev=lambda phase: [batch(100)]), lr=1e-2,
                      on_step=lambda phase, step, parts: losses.append(parts["total"].item()))[-1]
print(json.dumps({"losses": losses, "record": record}))
"""


@pytest.mark.slow
def test_the_epoch_loss_and_throughput_cover_every_rank(tmp_path):
    """Two gloo ranks on different batches: the epoch's loss is the mean over both ranks' micro-batches (not
    rank 0's), samples and tokens are their sum, the rate is over the slower rank's time."""
    import json
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_RANKS, str(r), str(tmp_path / str(r))], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    ranks = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    every = [loss for r in ranks for loss in r["losses"]]
    for r in ranks:
        assert r["record"]["loss"] == pytest.approx(sum(every) / len(every), rel=1e-9)
        assert r["record"]["samples"] == 4 * len(every) and r["record"]["tokens"] == 32 * len(every)
        assert r["record"]["seconds"] == max(q["record"]["seconds"] for q in ranks)
    assert ranks[0]["record"]["loss"] != pytest.approx(sum(ranks[0]["losses"]) / len(ranks[0]["losses"]), rel=1e-6)
