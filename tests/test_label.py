"""`xdray label` as users run it: a job killed midway resumes to exactly one row per id, a complete run is not
redone, bad corpora fail with one line and leave earlier outputs intact, and labels from another teacher or
tokenizer are refused. The CLI runs in subprocesses that start their own Ray (one at a time)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.torch import load_file, save_file

from xdray.cli import main
from xdray.config import load_config
from xdray.errors import XdrayError
from xdray.label.corpus import clean_rows
from xdray.label.run import check_labels

from .conftest import tiny_config

pytestmark = pytest.mark.slow

ROWS, CHUNK = 12000, 200


def xdray_label(job, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xdray.cli", "label", str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


@pytest.fixture(scope="module")
def job(tiny_task, tmp_path_factory):
    root = tmp_path_factory.mktemp("label")
    words = tiny_task["transfer"].read_text().split()
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"{' '.join(words[i % 500:i % 500 + 3 + i % 7])} {i}\n" for i in range(ROWS)))
    cfg = tiny_config(tiny_task, root / "out", label={
        "teacher": str(tiny_task["backbone"]), "actors": 1, "cpus_per_actor": 1, "chunk_rows": CHUNK, "batch_size": 32,
    })
    cfg["data"]["transfer"] = [str(corpus)]
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_killed_job_resumes_to_exactly_one_row_per_id_and_a_complete_one_is_not_redone(job):
    cfg = load_config(job)
    work, data = cfg.step_dir("label") / "work", cfg.labels_dir
    expected = {row_id for row_id, _, _ in clean_rows(cfg.data, cfg.seed, Counter())}
    assert len(expected) == ROWS

    proc = xdray_label(job)
    shards = work / "out" / "transfer"
    deadline = time.monotonic() + 240
    while not (shards.is_dir() and len(list(shards.glob("*.parquet"))) >= 3):
        assert proc.poll() is None, f"the job ended before it could be killed:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # a crash of the driver: no cleanup code runs
    proc.wait()
    time.sleep(3)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever Ray processes outlived the driver
    done = len(list(shards.glob("*.parquet")))
    total = -(-ROWS // CHUNK) + 1  # + the dev chunk
    assert 3 <= done < total and not data.exists(), "a partial run must not look complete"

    rerun = xdray_label(job)
    out, _ = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, out
    summary = json.loads((cfg.step_dir("label") / "summary.json").read_text())
    assert summary["resumed_chunks"] == done and summary["chunks"] == total
    ids = pq.read_table(data / "transfer", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == ROWS and set(ids) == expected
    assert summary["rows"] == summary["unique_ids"] == ROWS and 0 < summary["pad_fraction"] < 0.5 and summary["tokens_per_s"] > 0
    assert summary["peak_rss_mb"]["driver"] > 0 and summary["peak_rss_mb"]["actor"] > 0
    assert not work.exists()

    before = (data / "_manifest.json").stat().st_mtime_ns
    again = xdray_label(job)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "nothing to do" in out, out
    assert (data / "_manifest.json").stat().st_mtime_ns == before


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_the_corpus_pass_in_parallel_ray_tasks_labels_the_same_rows(job, tmp_path):
    """``label.corpus_segment_mb``: the corpus (about 180 kB) cut into ~10 kB segments, each cleaned in a Ray task:
    the stored rows are the serial pass's, with the same counts; a task's own error is one line."""
    cfg = load_config(job)
    serial = json.loads((cfg.step_dir("label") / "summary.json").read_text())
    out = tmp_path / "parallel"
    proc = subprocess.run([sys.executable, "-m", "xdray.cli", "label", str(job), "--set", f"output_dir={out}",
                           "--set", "label.corpus_segment_mb=0.01"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "label" / "summary.json").read_text())
    assert summary["cleaning"] == serial["cleaning"] and summary["unique_ids"] == summary["rows"] == ROWS
    ids = pq.read_table(out / "label" / "data" / "transfer", columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(pq.read_table(cfg.labels_dir / "transfer", columns=["id"]).column("id").to_pylist())
    assert summary["chunks"] > serial["chunks"]  # each segment ends its own last chunk

    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"body": "a great film"}\n')
    proc = subprocess.run([sys.executable, "-m", "xdray.cli", "label", str(job), "--set", f"output_dir={out}-bad",
                           "--set", "label.corpus_segment_mb=0.01", "--set", f"data.transfer=[{bad}]"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("xdray label: error: data.transfer rows.jsonl: ")
    assert "has no column 'text'" in proc.stderr.strip().splitlines()[-1]


def test_a_missing_or_empty_corpus_fails_with_one_line_and_keeps_earlier_labels(job, tmp_path, capsys):
    cfg = load_config(job)
    manifest = cfg.labels_dir / "_manifest.json"
    before = manifest.read_bytes()
    assert main(["label", str(job), "--set", f"data.transfer=[{tmp_path / 'missing.txt'}]"]) == 2
    assert "data.transfer[0]: not found" in capsys.readouterr().err
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n')
    assert main(["label", str(job), "--set", f"data.transfer=[{tmp_path / 'blank.txt'}, {tmp_path / 'blank.jsonl'}]"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no non-empty rows (4 read)" in err[0] and "fix:" in err[0]
    assert manifest.read_bytes() == before and not (cfg.step_dir("label") / "work").exists()


@pytest.mark.parametrize("change", ["weights", "tokenizer"])
def test_labels_from_another_teacher_or_tokenizer_are_refused(job, tiny_task, tmp_path, change):
    other = tmp_path / "teacher"
    shutil.copytree(tiny_task["backbone"], other)
    if change == "weights":
        tensors = load_file(other / "model.safetensors")
        name = next(iter(tensors))
        tensors[name] = tensors[name] + 0.01
        save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    else:
        with open(other / "vocab.txt", "a") as f:
            f.write("brandnewtoken\n")
    cfg = load_config(job, [f"label.teacher={other}", f"distill.labels={load_config(job).labels_dir}"])
    with pytest.raises(XdrayError, match=rf"whose {change} differ from .*fix: relabel with `xdray label`"):
        check_labels(cfg, [1], True)
    check_labels(load_config(job), [1], True)  # the teacher that labelled them is accepted


def test_a_stale_ray_start_address_on_the_machine_does_not_capture_a_local_run(job):
    """Without ``ray.address`` a command starts its own Ray, even where an earlier `ray start` or a crashed
    ``cluster_utils.Cluster`` left ``ray_current_cluster`` behind (Ray would connect to it, then refuse num_cpus)."""
    ray_tmp = Path(f"/tmp/xd-{uuid.uuid4().hex[:6]}")  # short: Ray's socket paths have a length limit
    (ray_tmp / "ray").mkdir(parents=True)
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        proc = xdray_label(job, env={**env, "RAY_TMPDIR": str(ray_tmp)})
        out, _ = proc.communicate(timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0 and "nothing to do" in out, out
