#!/usr/bin/env bash
# What bench/gpu_smoke.py needs on the device machine beyond what it has (Python 3.12, CUDA torch,
# transformers, tokenizers, pyarrow, numpy, psutil, msgpack, ninja, py-cpuinfo, nvidia-ml-py, pyyaml):
# DeepSpeed and the small pure-Python packages it and xdray's config need, unpacked into
# bench/.carry/site (ignored by git; a few MB). Then, on the device:
#   PYTHONPATH=bench/.carry/site:. python bench/gpu_smoke.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
carry=bench/.carry
rm -rf "$carry" && mkdir -p "$carry/wheels" "$carry/site"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# DeepSpeed ships an sdist only: build its (pure-Python, ops JIT-compiled at run time) wheel here
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$carry/wheels" "deepspeed==$(version deepspeed)"
# the same versions as this environment's, as CPython 3.12 manylinux wheels
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$carry/wheels" \
  "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" "annotated-types==$(version annotated-types)" \
  "typing-inspection==$(version typing-inspection)" "typing-extensions==$(version typing-extensions)" \
  "hjson==$(version hjson)" "einops==$(version einops)"
for wheel in "$carry"/wheels/*.whl; do
  "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" "$carry/site"
done
du -sh "$carry/site"
