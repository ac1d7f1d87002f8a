# medref: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
# The interpreter the venv is made from (`make venv PYTHON=python3.11`): any 3.11 gives the same bytes.
PYTHON ?= python3
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
STAMP := $(VENV)/.installed

.PHONY: venv run test test-fast lint bench clean-outputs

# The venv is built from the committed lock (requirements.lock) with --constraint, so an
# install never resolves versions at CI time. The stamp is re-made when the lock changes.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip==26.3"
	$(PY) -m pip install -q --no-cache-dir -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@# Let `.venv/bin/dvc repro` / `.venv/bin/snakemake` find `medref` without activating
	@# the venv: a .pth line puts the venv's bin/ first on PATH for its own processes.
	cp workflow/envs/medref_venv_path.pth $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/
	touch $(STAMP)

venv: $(STAMP)

# Whole pipeline on the embedded synthetic data: every run of the demo grid, the studies and the report.
# `dvc repro report` pulls in everything the report reads. That includes pretrain_text@qata (~20 s): the report
# depends on `models` for the runs' DVCLive logs (learning curves), and DVC cannot leave out models/text/ there.
run: $(STAMP)
	@start=$$(date +%s); \
	dvc repro report && \
	echo "pipeline finished in $$(( $$(date +%s) - start )) s; report: $(CURDIR)/reports/report.md (and reports/index.html)"

# --durations=25: the slowest 25 tests at the end of the log, where CI time goes
test: $(STAMP)
	$(PY) -m pytest -q --durations=25 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline_src tests bench tools
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint

bench: $(STAMP)
	$(PY) bench/run_all.py --full

clean-outputs:
	rm -rf data/raw data/shards data/labels data/splits models eval metrics reports runs logs .snakemake
