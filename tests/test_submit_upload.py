"""What a job upload contains, packaged by Ray's own code with xdray's settings: the whole ``xdray`` package (as
``py_modules``), and a working directory without environments, outputs, data caches or a shadowing ``xdray/``."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from ray._private.ray_constants import get_runtime_env_default_excludes
from ray._private.runtime_env.packaging import create_package

import xdray
from xdray.submit import runtime_env

REPO = Path(__file__).resolve().parents[1]


def _packaged(path: str, excludes: list[str], parent: bool, dest: Path) -> set[str]:
    """The file names of the zip Ray builds for a working dir (``parent`` False) or a py_modules entry."""
    create_package(path, dest, include_gitignore=True, include_parent_dir=parent, excludes=excludes)
    with zipfile.ZipFile(dest) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


def _uploads(working_dir: Path, tmp: Path) -> tuple[set[str], set[str]]:
    env = runtime_env(working_dir)
    (module,) = env["py_modules"]
    wd = _packaged(env["working_dir"], get_runtime_env_default_excludes() + env["excludes"], False, tmp / "wd.zip")
    return wd, _packaged(module, env["excludes"], True, tmp / "module.zip")


def test_the_package_upload_holds_every_file_of_the_package(tmp_path):
    package = Path(xdray.__file__).parent
    files = {f"xdray/{p.relative_to(package)}" for p in package.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    _, module = _uploads(REPO, tmp_path)
    assert files and files <= module, sorted(files - module)
    assert {"xdray/data/tables.py", "xdray/config/__init__.py", "xdray/cli.py"} <= module
    assert not any("__pycache__" in n for n in module)


def test_the_working_dir_upload_leaves_out_local_state_and_the_checkout_package(tmp_path):
    project = tmp_path / "project"
    for rel in ("jobs/run.yaml", "notes/data/keep.txt", ".venv/bin/python", "venv/lib/x.py", "outputs/run/summary.json",
                "data/samples/train.tsv", "mlruns/0/meta.yaml", "mlflow.db", ".git/HEAD", "x.egg-info/PKG-INFO",
                "build/lib/x.py", "src/__pycache__/a.pyc"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("x")
    (project / ".gitignore").write_text("/data/\n")  # data caches are the project's to list (as this repo does)
    shutil.copytree(REPO / "xdray", project / "xdray", ignore=shutil.ignore_patterns("__pycache__"))
    wd, _ = _uploads(project, tmp_path)
    assert wd == {"jobs/run.yaml", "notes/data/keep.txt", ".gitignore"}

    (tmp_path / "repo").mkdir()
    repo_wd, _ = _uploads(REPO, tmp_path / "repo")
    assert "jobs/quickstart.yaml" in repo_wd and "pyproject.toml" in repo_wd
    assert not [n for n in repo_wd if n.split("/")[0] in {"xdray", ".venv", "outputs", "data", ".git"}]
