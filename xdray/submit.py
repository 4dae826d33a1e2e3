"""`xdray submit` and `xdray jobs`: run pipeline steps as Ray Jobs on a running cluster.

How code reaches the nodes: the job ships *this client's* ``xdray`` package as a ``py_modules`` entry, so the
code you submit is the code that runs, whatever xdray the image has installed; the image supplies Ray, torch and
the other dependencies. The working directory ships too (config, small local
files), minus virtualenvs, outputs, what its .gitignore lists, and any ``xdray/`` folder at its root, which would
otherwise come first on the cluster's ``sys.path`` and shadow the shipped package.

The job runs ``python -m xdray.cli STEP <config>`` on the cluster. The config is shipped raw, with ``--set``
applied, so its relative paths resolve on the cluster; it is validated here first, so a bad config never leaves
the client. Ray's token authentication is sent as an ``Authorization`` header whenever a token is available.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

import yaml

from xdray.config import ConfigError, load_raw, validate_config
from xdray.errors import XdrayError

STAGING = ".xdray-submit"
# Ray applies one ``excludes`` list to the working dir *and* to each py_modules package, relative to each root:
# a root-anchored "/data/" would drop the package's own ``xdray/data/``. So data caches are left to the working
# dir's .gitignore / .rayignore (which Ray honours; this repository's lists /data/), and every pattern here is
# one that can never match a file of the package (``tests/test_submit_upload.py`` checks both uploads).
EXCLUDES = [".venv/", "venv/", ".git/", "__pycache__/", "*.pyc", "*.egg-info/", ".pytest_cache/",
            "/outputs/", "/mlruns/", "/mlflow.db", "/build/", "/dist/", "/xdray/"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def auth_headers() -> dict[str, str]:
    """``Authorization: Bearer <token>`` from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("no cluster address; fix: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except Exception as e:  # connection refused, 401/403, not a dashboard: all end the same way for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise XdrayError(
            f"cannot reach the Ray Jobs server at {address} ({reason}); fix: check the address (the dashboard "
            "port, 8265 by default) and, with token auth, set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
        ) from None


def runtime_env(working_dir: Path) -> dict:
    """What a job uploads: ``working_dir`` and this client's ``xdray`` package, both under ``EXCLUDES``."""
    import xdray

    return {"working_dir": str(working_dir), "py_modules": [str(Path(xdray.__file__).parent)], "excludes": EXCLUDES}


def submit(
    config_path: str, overrides: list[str], step: str, address: str | None, follow: bool, entrypoint_cpus: float
) -> int:
    raw = load_raw(config_path, overrides)
    validate_config(raw)  # fail on the client, before anything is shipped
    jobs = client(address)
    submission_id = f"xdray-{step}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    staged = Path.cwd() / STAGING / f"{submission_id}.yaml"
    staged.parent.mkdir(exist_ok=True)
    staged.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        jobs.submit_job(
            entrypoint=f"python -m xdray.cli {step} {STAGING}/{staged.name}",
            submission_id=submission_id,
            runtime_env=runtime_env(Path.cwd()),
            entrypoint_num_cpus=entrypoint_cpus,
            metadata={"xdray_step": step, "xdray_config": Path(config_path).name},
        )
    finally:
        staged.unlink(missing_ok=True)  # the working directory is packaged and uploaded by submit_job
    print(f"submitted {submission_id} ({step} {config_path}) to {jobs.get_address()}")
    if not follow:
        print(f"  follow it with: xdray jobs logs {submission_id} --follow --address {jobs.get_address()}")
        return 0
    return follow_job(jobs, submission_id)


def follow_job(jobs, submission_id: str) -> int:
    """Stream the job's logs until it ends; exit status 0 only if it SUCCEEDED."""

    async def stream() -> None:
        async for chunk in jobs.tail_job_logs(submission_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(stream())
    info = jobs.get_job_info(submission_id)
    while info.status.value not in TERMINAL:  # the log stream can close just before the status settles
        time.sleep(1)
        info = jobs.get_job_info(submission_id)
    if info.status.value == "SUCCEEDED":
        print(f"job {submission_id} SUCCEEDED")
        return 0
    message = (info.message or "").strip().splitlines()
    print(f"xdray submit: job {submission_id} {info.status.value}: {message[-1] if message else 'no message'}",
          file=sys.stderr)
    return 1


def jobs_command(action: str, submission_id: str, address: str | None, follow: bool) -> int:
    jobs = client(address)
    if action == "status":
        info = jobs.get_job_info(submission_id)
        print(f"{submission_id} {info.status.value}" + (f": {info.message}" if info.message else ""))
        return 0 if info.status.value != "FAILED" else 1
    if action == "logs":
        if follow:
            return follow_job(jobs, submission_id)
        sys.stdout.write(jobs.get_job_logs(submission_id))
        return 0
    stopped = jobs.stop_job(submission_id)
    print(f"{submission_id}: {'stop requested' if stopped else 'already finished'}")
    return 0
