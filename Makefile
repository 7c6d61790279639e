# Two entry points do all set-up on a fresh machine:
#   make serve   - install the serving dependencies (no torch) and serve models/ on http://$(HOST):$(PORT)
#   make test    - install system packages and every Python extra, then run the whole test suite
# Installs come from the hashed lock files in locks/ (make lock writes them from pyproject.toml's ranges;
# make lock-check fails when they are stale). docs/development.md says more.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --no-deps
HOST   ?= 127.0.0.1
PORT   ?= 8000
# torch's CPU build is not on PyPI: where pip looks for it when its configured sources lack it.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

.PHONY: serve test docs lock lock-upgrade lock-check system-deps train-shipped bench clean

serve: $(VENV)/.serve-installed
	$(VENV)/bin/pixelserve serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-installed system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

docs: $(VENV)/.dev-installed
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

system-deps:
	scripts/install-system-deps.sh

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# --require-hashes: every package is the exact file the lock names. The project itself last, without deps.
$(VENV)/.serve-installed: locks/serve.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) --require-hashes -r locks/serve.txt
	$(PIP) -e .
	touch $@

# torch in a step of its own, pinned by version but not hashed (scripts/lock.sh says why); its
# dependencies come hashed in dev.txt.
$(VENV)/.dev-installed: locks/dev.txt locks/torch-cpu.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) --require-hashes -r locks/dev.txt
	$(PIP) -r locks/torch-cpu.txt 2>/dev/null || $(PIP) --index-url $(TORCH_INDEX_URL) -r locks/torch-cpu.txt
	$(PIP) -e .
	$(PY) -m pip check
	touch $@ $(VENV)/.serve-installed

lock: $(VENV)/.dev-installed
	UV=$(VENV)/bin/uv PYTHON=$(PY) scripts/lock.sh locks

lock-upgrade: $(VENV)/.dev-installed
	UPGRADE=1 UV=$(VENV)/bin/uv PYTHON=$(PY) scripts/lock.sh locks

# Compile again into a copy of locks/ (uv keeps pins the ranges still allow): any difference means
# pyproject.toml changed without `make lock`.
lock-check: $(VENV)/.dev-installed
	@fresh=$$(mktemp -d) && cp locks/*.txt "$$fresh"/ \
	  && UV=$(VENV)/bin/uv PYTHON=$(PY) scripts/lock.sh "$$fresh" \
	  && diff -ru locks "$$fresh"; status=$$?; rm -rf "$$fresh"; \
	  [ $$status -eq 0 ] || { echo "locks/ is stale: run 'make lock' and commit locks/"; exit 1; }

train-shipped: $(VENV)/.dev-installed
	PY=$(PY) scripts/train-shipped-models.sh

bench: $(VENV)/.dev-installed
	$(PY) bench/serving.py
	$(PY) bench/train_models.py

clean:
	rm -rf $(VENV) .pytest_cache build/site
