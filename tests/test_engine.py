"""The DeepSpeed engine the workers build, in one process (gloo, world size 1): the config xdray derives really
engages ZeRO-Offload and gradient accumulation, and lr-0 freezing holds under both."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
from transformers import BertConfig, BertModel

from xdray.config import StudentConfig
from xdray.distill.objective import DistillModule, Objective
from xdray.distill.schedule import param_groups, set_trainable
from xdray.distill.student import build_student
from xdray.train.engine import TrainSpec, deepspeed_config


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


def engine_for(ds_module, zero: dict, **ds):
    torch.manual_seed(0)
    teacher = BertModel(BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=16))
    module = DistillModule(build_student(StudentConfig(layers=2, hidden=16, heads=2), teacher, 2), 32, 0)
    spec = TrainSpec(role="student", init="", stages=[], num_labels=2, max_length=16, batch_size=4, lr=1e-2,
                     deepspeed={"zero_stage": 2, "precision": "fp32", "grad_clip": 1.0, "offload_optimizer": False,
                                "train_batch_size": None, **zero},
                     scratch="", dev=None, **ds)
    engine, *_ = ds_module.initialize(model=module, model_parameters=param_groups(module),
                                      config=deepspeed_config(spec, 1))
    return engine


def micro_step(engine) -> None:
    ids = torch.randint(4, 90, (4, 8))
    out = engine(input_ids=ids, attention_mask=torch.ones_like(ids))
    engine.backward(Objective(losses=("ce",))(out, {"labels": torch.tensor([0, 1, 0, 1])})["total"])
    engine.step()


def snapshot(engine) -> dict:
    return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def test_offload_and_accumulation_are_engaged_and_frozen_blocks_stay_put(deepspeed):
    engine = engine_for(deepspeed, {"offload_optimizer": True}, grad_accum=2)
    assert engine.zero_optimization_stage() == 2 and engine.zero_cpu_offload()
    assert engine.gradient_accumulation_steps() == 2 and engine.train_batch_size() == 8
    set_trainable(engine.optimizer, ("block.1",), lr=1e-2)  # block.0 and the embeddings frozen
    before = snapshot(engine)
    micro_step(engine)
    assert all(torch.equal(before[n], p) for n, p in engine.module.named_parameters())  # mid-accumulation
    micro_step(engine)
    changed = {n for n, p in engine.module.named_parameters() if not torch.equal(before[n], p)}
    layer = "student.bert.encoder.layer"
    assert any(n.startswith(f"{layer}.1.") for n in changed) and any("classifier" in n for n in changed)
    assert not any(n.startswith((f"{layer}.0.", "student.bert.embeddings")) for n in changed)


_REALLOCATE = """
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
