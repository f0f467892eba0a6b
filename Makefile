# Two commands do all the set-up on a fresh machine:
#   make run    the main job (creates .venv and installs medcli on first use)
#   make test   the whole test suite, slow end-to-end tests included (same; what CI runs)
# and, for the inner loop, make test-fast: the tests not marked slow (see pyproject.toml); make report writes
# results/report.html, Snakemake's HTML report of the last run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: install run report test test-fast clean

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

# Snakemake's HTML report of the last run (summary, figures per dataset and configuration, Grad-CAM galleries).
report: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/snakemake --report results/report.html

# The whole suite runs in one process: its slow tests start snakemake (--cores 2) and torchrun (2 processes), which
# already use both cores of a small machine.
test: $(STAMP)
	$(PY) -m pytest -q

# TEST_JOBS: pytest-xdist workers for test-fast (0: one process). Measured on a 2-core machine shared with other
# jobs (load ~5): one process 84 s, -n 2 115 s (each worker imports torch and builds the module fixtures again).
# On an idle machine with more cores, try TEST_JOBS=auto.
TEST_JOBS ?= 0

test-fast: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -m "not slow" -n $(TEST_JOBS)

clean:
	rm -rf $(VENV) work logs mlruns .snakemake results/*/ results/summary.* results/experiment.json results/figures results/report.html
