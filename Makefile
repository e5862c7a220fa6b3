# The README's two commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup demo test clean

$(VENV)/.setup: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.setup-dev: $(VENV)/.setup
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.setup  ## install the project into .venv

demo: setup  ## train the demo preset on ShapesWorld (~3 min on 2 CPU cores), then write its analysis report
	$(PY) -m experiments fit --config experiments/configs/clip.yaml --config experiments/configs/demo.yaml
	$(PY) -m analysis report --ckpt runs/demo

test: $(VENV)/.setup-dev  ## run the test suite
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
