"""Debian packages as data sources: ``apt-get download`` into a cache (kept for reruns) and ``dpkg -x``; no root
needed. A missing tool, a failed download or a package that is not there is one line with the caller's fix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

from xdray.errors import XdrayError


def fetch_deb(package: str, cache: Path, fix: str) -> tuple[Path, str]:
    """The unpacked tree of ``package`` under ``cache`` and the package's version."""
    cache = cache.resolve()  # dpkg runs in the cache directory: relative paths would point elsewhere
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        for tool in ("apt-get", "dpkg"):
            if shutil.which(tool) is None:
                raise XdrayError(f"{tool} not found, so Debian's {package} cannot be fetched; {fix}")
        cache.mkdir(parents=True, exist_ok=True)
        run(["apt-get", "download", package], cache, f"apt-get download {package}", fix)
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise XdrayError(f"apt-get download {package} left no .deb in {cache}; {fix}")
    deb = debs[-1]
    tree = cache / package
    done = tree / ".unpacked"
    if not done.is_file():
        if shutil.which("dpkg") is None:
            raise XdrayError(f"dpkg not found, so {deb.name} cannot be unpacked; {fix}")
        shutil.rmtree(tree, ignore_errors=True)
        run(["dpkg", "-x", str(deb), str(tree)], cache, f"dpkg -x {deb.name}", fix)
        done.touch()
    return tree, unquote(deb.name.split("_")[1])  # apt writes the epoch colon as %3a


def run(cmd: list[str], cwd: Path, what: str, fix: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise XdrayError(f"{what} timed out after 600 s; {fix}") from None
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise XdrayError(f"{what} failed ({last}); {fix}")
