# cnnbench: the commands the README documents. Each sets up .venv on first use.
#   make sweep [SPACE=search_spaces/NAME.yaml] [STUDY=name] [TRIALS=n] [TIMEOUT=minutes]
#              [ENGINE=optuna|kerastuner] [ALGO=...] [STORAGE=url] [SEED=n] [NO_START_WITH=1]
#              [RECIPE_ONLY=1]   (no search: the space's recipe trained for as long as TIMEOUT holds)
#              [SET="knob=value knob=value"]   (parameters fixed: an ablation of a recipe)
#   make test | make bench | make check SPACE=... | make leaderboard [STUDY=...]
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SPACE ?= search_spaces/default.yaml
ENGINE ?= optuna
# On machines without network, the offline CIFAR-10 copy beside the checkout is used when
# present; elsewhere keras.datasets.cifar10 downloads it once. An explicit setting wins.
ifeq ($(origin CNNBENCH_CIFAR10), undefined)
  ifneq ($(wildcard ../shared/datasets/cifar10-jpeg/train),)
    export CNNBENCH_CIFAR10 := $(abspath ../shared/datasets/cifar10-jpeg)
  endif
endif
export TF_CPP_MIN_LOG_LEVEL ?= 3

SWEEP_ARGS := --space $(SPACE) --engine $(ENGINE) \
	$(if $(STUDY),--study $(STUDY)) $(if $(TRIALS),--trials $(TRIALS)) \
	$(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(ALGO),--algo $(ALGO)) \
	$(if $(STORAGE),--storage $(STORAGE)) $(if $(WORKERS),--workers $(WORKERS)) \
	$(if $(SEED),--seed $(SEED)) $(if $(NO_START_WITH),--no-start-with) $(if $(RECIPE_ONLY),--recipe-only) \
	$(foreach setting,$(SET),--set $(setting))

.PHONY: sweep test test-slow lint bench bench-recipe check leaderboard clean-venv
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,export]'
	touch $@

sweep: $(VENV)/.installed
	$(BIN)/cnnbench sweep $(SWEEP_ARGS)

# make test: everything but the real-process end-to-end tests (marked slow), under 4 minutes
# on 2 cores, one pytest process per core (pytest-xdist; a test file stays in one process, so
# its module and session fixtures are built once); PYTEST_ARGS=-n0 runs it in this process.
# make test-slow: those, one at a time (each starts sweeps of its own); .ci/run runs both.
# nproc: the cores this process may use (xdist's "auto" counts physical cores where psutil
# is installed: one on a 2-vCPU VM with SMT).
TEST_PROCESSES ?= $(shell nproc 2>/dev/null || echo 1)
test: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# The PyTorch peer gets a venv of its own; if it cannot be installed the bench says so and
# measures the rest.
PEER_VENV := .venv-peer
$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet torch==2.13.0 numpy pillow==13.0.0
	touch $@

bench: $(VENV)/.installed
	@$(MAKE) --no-print-directory $(PEER_VENV)/.installed || echo "make bench: the PyTorch peer could not be installed; measuring without it"
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# The anchor recipe: airbench94 in PyTorch on this CPU and the JPEG copy, seeds 0-2 (about
# 50 minutes a seed on a 2-core AMD EPYC Zen 3). tcmalloc, as PyTorch's CPU guide advises,
# when Debian's libtcmalloc-minimal4 is installed. SEEDS="0" runs one.
SEEDS ?= 0 1 2
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4))
# "Intel(R) Xeon(R) Processor" -> intel-xeon-processor: a file name the shell need not quote
CPU_NAME := $(shell sed -n 's/^model name[^:]*: *//p' /proc/cpuinfo | head -1 | sed -e 's/(R)//g' -e 's/(TM)//g' | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/^-*//;s/-*$$//')
bench-recipe: $(VENV)/.installed
	@$(MAKE) --no-print-directory $(PEER_VENV)/.installed
	mkdir -p results/bench
	$(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC)) $(PEER_VENV)/bin/python benchmarks/peers/airbench94_torch.py \
	  --data $(or $(CNNBENCH_CIFAR10),../shared/datasets/cifar10-jpeg) --seeds $(SEEDS) \
	  --out results/bench/airbench94-peer-$(CPU_NAME)-$(shell date +%Y-%m-%d).json

check: $(VENV)/.installed
	$(BIN)/cnnbench check $(SPACE) $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(WORKERS),--workers $(WORKERS))

leaderboard: $(VENV)/.installed
	$(BIN)/cnnbench leaderboard $(STUDY)

clean-venv:
	rm -rf $(VENV)
