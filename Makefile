# Two entry points: `make demo` and `make test`. Both (re)build .venv only when
# pyproject.toml changed since the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: this machine keeps these wheels on disk (a bare `torch` pulls GBs).
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Each demo writes a results folder of its own, so a rerun never touches an earlier one.
demo: $(STAMP)
	$(BIN)/automl data synth --out data/synthetic
	$(BIN)/automl launch -e experiments/synthetic_smoke.yaml results_dir=results/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests
