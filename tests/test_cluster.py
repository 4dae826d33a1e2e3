"""Production-shaped: the cluster runs an *installed* xdray, not this checkout. A wheel of the project is installed,
non-editable, into a virtualenv outside the checkout that plays the node image; `ray start --head` runs from that
virtualenv in its own directory (token auth on, dashboard on 127.0.0.1); a real `mlflow server` takes the runs.
`xdray submit --follow` from the checkout's environment runs the tiny pipeline as a Ray Job that logs over HTTP;
a bad job is reported FAILED. Both servers are stopped by their own process ids, never by `ray stop`.

The image's third-party packages (Ray, torch, ...) are this environment's, reached through a ``.pth`` line, so
the test downloads nothing; what it checks is where *xdray's* code comes from on the cluster."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

import xdray
from xdray.cli import main

from .conftest import tiny_config

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
IMAGE_VERSION = f"{xdray.__version__}+image"
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, seconds: float, headers: dict | None = None) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def _stop(pids: list[int]) -> None:
    procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """A virtualenv with xdray installed from a freshly built wheel; returns its ``bin`` directory."""
    root = tmp_path_factory.mktemp("image")
    src = root / "src"  # the wheel is built from a copy: nothing is written into the checkout
    shutil.copytree(REPO / "xdray", src / "xdray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    init = src / "xdray" / "__init__.py"  # the image's copy is told apart from the client's by its version
    init.write_text(init.read_text().replace(f'"{xdray.__version__}"', f'"{IMAGE_VERSION}"'))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("xdray-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    image_python = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(image_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "image_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    where, version = subprocess.check_output(
        [str(image_python), "-c", "import xdray, xdray.label.corpus as m; print(m.__file__, xdray.__version__)"],
        text=True, cwd=root).split()
    assert where.startswith(str(site)) and version == IMAGE_VERSION  # its installed copy, not the checkout
    return venv / "bin"


@pytest.fixture(scope="module")
def head(image, tmp_path_factory):
    """A Ray head of our own started from the image's virtualenv in a directory of its own, found and stopped by
    the processes that carry its temp dir."""
    root = Path(f"/tmp/xdray-head-{uuid.uuid4().hex[:6]}")  # short: Ray's socket paths have a length limit
    token = tmp_path_factory.mktemp("auth") / "token"
    token.write_text(uuid.uuid4().hex)
    home = tmp_path_factory.mktemp("head-cwd")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "HF_HUB_OFFLINE": "1",
           "PATH": f"{image}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    dash = _free_port()
    subprocess.run(
        [str(image / "python"), "-m", "ray.scripts.scripts", "start", "--head", "--port", str(_free_port()),
         "--num-cpus", "4", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--temp-dir", str(root),
         "--disable-usage-stats"],
        env=env, cwd=home, check=True, capture_output=True, timeout=180,
    )
    pids = [p.pid for p in psutil.process_iter(["cmdline"]) if str(root) in " ".join(p.info["cmdline"] or [])]
    try:
        address = f"http://127.0.0.1:{dash}"
        _wait_http(f"{address}/api/version", 60, {"Authorization": f"Bearer {token.read_text()}"})
        yield {"address": address, "token": token}
    finally:
        _stop(pids)
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        _wait_http(f"{uri}/health", 90)
        yield {"uri": uri, "artifacts": root / "artifacts"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
def client_env(head, monkeypatch):
    monkeypatch.chdir(REPO)  # the working directory that is shipped
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(head["token"]))


def test_submit_follow_runs_the_pipeline_and_logs_over_http(head, mlflow_server, client_env, tiny_task, tmp_path,
                                                            capsys):
    out = tmp_path / "out"
    cfg = tiny_config(tiny_task, out, mlflow={"tracking_uri": mlflow_server["uri"], "experiment": "xdray-submit"},
                      search={"space": {"layers": [1], "hidden": [16], "heads": [2]}, "num_samples": 1,
                              "points_to_evaluate": []})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(cfg))
    assert main(["submit", str(job), "--address", head["address"], "--follow"]) == 0
    printed = capsys.readouterr().out
    assert "SUCCEEDED" in printed and "[3/4] distill: running" in printed
    # the job's log is the short console; Ray's own output went to the log file on the shared output dir
    assert f"log: {out / 'logs' / 'xdray.log'}" in printed and "RayTrainWorker" not in printed
    assert "RayTrainWorker" in (out / "logs" / "xdray.log").read_text()
    assert (out / "pipeline" / "summary.json").is_file() and (out / "distill" / "student" / "model.safetensors").is_file()
    assert not (REPO / ".xdray-submit").exists() or not list((REPO / ".xdray-submit").iterdir())

    client = MlflowClient(mlflow_server["uri"])
    runs = client.search_runs([client.get_experiment_by_name("xdray-submit").experiment_id])
    names = {r.info.run_name for r in runs}
    assert {"pipeline", "teacher", "label", "distill", "search"} <= names
    assert {r.data.tags["xdray.version"] for r in runs} == {xdray.__version__}  # the client's code ran, not the image's
    distill = next(r for r in runs if r.info.run_name == "distill")
    assert "dev/logits/block.0/accuracy" in distill.data.metrics  # logged by a Ray Train worker, through the server
    assert "summary.json" in {a.path for a in client.list_artifacts(distill.info.run_id)}
    assert list(mlflow_server["artifacts"].rglob("summary.json"))  # artifacts were proxied by the server


def test_a_failing_job_is_reported_failed_with_its_error(head, client_env, tiny_task, tmp_path, capsys):
    cfg = tiny_config(tiny_task, tmp_path / "out")
    cfg["data"]["train"] = "/nonexistent/train.tsv"  # valid config, missing file on the cluster
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(cfg))
    assert main(["submit", str(job), "--step", "teacher", "--address", head["address"], "--follow"]) == 1
    captured = capsys.readouterr()
    assert "data.train: not found: /nonexistent/train.tsv" in captured.out  # the job's own one-line error
    assert "FAILED" in captured.err
    submission_id = captured.out.split("submitted ", 1)[1].split()[0]
    assert submission_id.startswith("xdray-teacher-")

    assert main(["jobs", "status", submission_id, "--address", head["address"]]) == 1
    assert capsys.readouterr().out.startswith(f"{submission_id} FAILED")
    assert main(["jobs", "logs", submission_id, "--address", head["address"]]) == 0
    assert "data.train: not found" in capsys.readouterr().out
    assert main(["jobs", "stop", submission_id, "--address", head["address"]]) == 0
    assert "already finished" in capsys.readouterr().out


def test_bad_config_and_bad_token_never_reach_the_cluster(head, client_env, tiny_task, tmp_path, monkeypatch, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_config(tiny_task, tmp_path / "out")))
    assert main(["submit", str(job), "--address", head["address"], "--set", "distill.student.heads=3"]) == 2
    assert "distill.student: hidden=16 is not divisible by heads=3" in capsys.readouterr().err
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong-token")
    assert main(["submit", str(job), "--address", head["address"]]) == 1
    assert "fix: check the address" in capsys.readouterr().err
