# The README's two commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint clean

$(VENV)/.setup: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.setup-dev: $(VENV)/.setup
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.setup  ## install the project into .venv

demo: setup  ## train the demo preset on ShapesWorld (3-12 min on 2 CPU cores), then write its analysis report
	$(PY) -m experiments fit --config experiments/configs/clip.yaml --config experiments/configs/demo.yaml
	$(PY) -m analysis report --ckpt runs/demo

test: $(VENV)/.setup-dev  ## run the whole test suite
	$(PY) -m pytest -q

test-fast: $(VENV)/.setup-dev  ## the inner loop: every test but the slow ones (about a minute)
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.setup-dev  ## ruff (lint + format check) and mypy (configured in pyproject.toml)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) runs
