# Two commands do all the set-up on a fresh machine:
#   make run    the main job (creates .venv and installs medcli on first use)
#   make test   the test suite (same)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: install run test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/medcli data synth demo/data --layout presplit --classes 3 --per-class 60 --size 64 --overwrite
	$(VENV)/bin/medcli data inspect demo/data --json results/demo/inspect.json
	$(VENV)/bin/medcli split demo/data --folds 5 --seed 0 --out results/demo/splits.json

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo results/demo
