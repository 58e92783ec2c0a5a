# The README's two commands: `make bench` (the main job) and `make test`.
# Each creates .venv on first use, installs everything, builds the extension in place, then runs.
# TORCH=torch==2.13.0 gives a CPU-only install (the extension is then built CPU-only).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1
export MAX_JOBS ?= 2

.PHONY: setup build test bench example clean

$(VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install "$(TORCH)" numpy ninja pybind11 pytest hypothesis scipy tqdm matplotlib
	touch $@

setup: $(VENV)/.installed

build: setup
	$(PY) setup.py build_ext --inplace

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m benchmarks.run

example: build
	$(PY) examples/chirp_classification.py

clean:
	rm -rf build lwvd_cuda/*.so
