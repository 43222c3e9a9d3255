# make demo   - install, then run the whole tiny pipeline (the main job)
# make test   - install, then run the test suite
# make bench  - benchmarks against plain baselines (figures: bench/README.md)
# make lint   - ruff
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

# A CPU build of torch where there is no GPU: these machines hold a local torch==2.13.0 CPU wheel that pip takes;
# elsewhere the CPU index of pytorch.org serves one. With a GPU (nvidia-smi present) the default CUDA build is right.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q "torch>=2.13,<2.14"; \
	else \
	  $(PY) -m pip install -q torch==2.13.0 || \
	  $(PY) -m pip install -q "torch>=2.13,<2.14" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/rlhf pipeline --recipe tiny --overwrite

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check rlhf_cli tests bench
	$(VENV)/bin/ruff format --check rlhf_cli tests bench

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache
