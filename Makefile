# One-command set-up: every target creates .venv and installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ecflow-installed
BENCH_STAMP := $(VENV)/.ecflow-bench-installed
# One BLAS thread per process: the suite runs two pytest workers on two cores.
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
PYTEST_WORKERS ?= 2

.PHONY: install demo test bench bench-all clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m ecflow.demo

# pytest exits 5 when it collects no test; any non-zero exit fails make and so CI.
test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --nbmake tests notebooks

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[all,test,bench]'
	touch $(BENCH_STAMP)

# Reruns the result files measured within 15 minutes and prints the target of each other one.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run

bench-all: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --all

# One committed result file with its own settings: make bench-sweep-medium, bench-table1, ...
bench-%: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --only $*

clean:
	rm -rf $(VENV) demo-out .pytest_cache
