"""`bench/gpu_smoke.py --device cpu`: the GPU smoke run's code path on tiny shapes, as the device machine runs it
(no Ray, no MLflow importable), ending in its one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
WITHOUT_RAY = """
import runpy, sys
sys.modules["ray"] = None  # the device machine has neither: an import of either fails
sys.modules["mlflow"] = None
sys.argv = ["bench/gpu_smoke.py", "--device", "cpu"]
runpy.run_path("bench/gpu_smoke.py", run_name="__main__")
"""


def test_the_gpu_smoke_run_works_on_cpu_without_ray():
    proc = subprocess.run([sys.executable, "-c", WITHOUT_RAY], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["gpu"] is None and result["label_mfu"] is None
    assert result["label_tokens_per_s"] > 0 and result["distill_samples_per_s"] > 0
    assert set(result["latency_ms_cpu"]) == {"b1", "b32"} and all(v > 0 for v in result["latency_ms_cpu"].values())
    assert result["student_dtype_saved"] == "float32"  # trained by a bf16 engine, saved in fp32
