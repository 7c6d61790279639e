# Two entry points do all set-up on a fresh machine:
#   make serve   - install the serving dependencies (no torch) and serve models/ on http://$(HOST):$(PORT)
#   make test    - install system packages and every Python extra, then run the whole test suite
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve test system-deps train-shipped bench clean

serve: $(VENV)/.serve-installed
	$(PY) -m service --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-installed system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

system-deps:
	scripts/install-system-deps.sh

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[serve]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[serve,train,dev,bench]'
	touch $@ $(VENV)/.serve-installed

train-shipped: $(VENV)/.dev-installed
	PY=$(PY) scripts/train-shipped-models.sh

bench: $(VENV)/.dev-installed
	$(PY) bench/serving.py
	$(PY) bench/train_models.py

clean:
	rm -rf $(VENV) .pytest_cache
