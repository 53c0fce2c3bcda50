# Two commands do everything on a fresh machine: `make run` and `make test`.
# Each creates .venv and installs the project into it when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPERIMENT_DIR ?= experiments
WORKLOAD ?= ogbg
CONFIG ?= small
PYTEST_ARGS ?=
STUDY_TRIALS ?= 3
STUDY_STUDIES ?= 3

export PYTHONHASHSEED := 0
export TF_CPP_MIN_LOG_LEVEL := 3
# jaxlib's CPU eigh uses scipy's OpenBLAS; multi-threaded it spin-waits against XLA (see benchmark/__init__.py).
export OPENBLAS_NUM_THREADS := 1

.PHONY: run test test-slow bench bench-full bench-scaling bench-kfac-jax venv data clean study

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

data: $(STAMP)
	$(BIN)/kfac-bench build-data --workload=$(WORKLOAD)

run: $(STAMP)
	$(BIN)/python scripts/run_default.py --workload=$(WORKLOAD) --config=$(CONFIG) --experiment_dir=$(EXPERIMENT_DIR)

# Equal-budget random-search studies (reference, K-FAC-expand, K-FAC-reduce) into experiments/study_<config>.
study: $(STAMP)
	$(BIN)/python scripts/run_study.py --workload=$(WORKLOAD) --config=$(CONFIG) --experiment_dir=$(EXPERIMENT_DIR) --num_tuning_trials=$(STUDY_TRIALS) --num_studies=$(STUDY_STUDIES)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --durations=15 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python scripts/bench_kfac_step.py
	$(BIN)/python scripts/bench_expand_vs_reduce.py
	$(BIN)/python scripts/bench_inverses.py

# One training step of the full configs (ViT-S/16, WRN-16-4, ogbg GNN); full batch sizes on a GPU.
bench-full: $(STAMP)
	$(BIN)/python scripts/bench_full_step.py

# Nesterov vs K-FAC-reduce on 1, 2, 4, 8 devices (forced host devices on a CPU): docs/bench_scaling.md and .png.
bench-scaling: $(STAMP)
	$(BIN)/python scripts/bench_scaling.py

# Our K-FAC step vs kfac-jax's (docs/bench_vs_kfac_jax.md); kfac-jax in a venv of its own. It pins
# jax 0.9.1: kfac-jax 0.0.8 fails on jax >= 0.9.2 (see the script's docstring).
KFAC_JAX_VENV ?= .venv-kfac-jax
KFAC_JAX_PACKAGES := kfac-jax==0.0.8 jax==0.9.1 jaxlib==0.9.1
BENCH_KFAC_JAX_ARGS ?=

$(KFAC_JAX_VENV)/.installed:
	test -x $(KFAC_JAX_VENV)/bin/python || $(PYTHON) -m venv $(KFAC_JAX_VENV)
	$(KFAC_JAX_VENV)/bin/python -m pip install --quiet $(KFAC_JAX_PACKAGES)
	touch $@

bench-kfac-jax: $(STAMP) $(KFAC_JAX_VENV)/.installed
	$(BIN)/python scripts/bench_vs_kfac_jax.py --kfac_jax_python=$(KFAC_JAX_VENV)/bin/python $(BENCH_KFAC_JAX_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
