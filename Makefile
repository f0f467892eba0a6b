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

CORES ?= 2

run: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MEDCLI_NO_PROGRESS=1 $(VENV)/bin/snakemake --cores $(CORES)

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) work logs .snakemake results/*/ results/summary.* results/experiment.json results/figures
