# The README's two commands: `make bench` (the main job) and `make test`.
# Each creates .venv on first use, installs everything, builds the extension in place, then runs.
# TORCH=torch==2.13.0 gives a CPU-only install (the extension is then built CPU-only).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1
export MAX_JOBS ?= 2

.PHONY: setup build test bench example accuracy accuracy-smoke clean

$(VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install "$(TORCH)" numpy ninja pybind11 pytest hypothesis scipy tqdm matplotlib soundfile
	touch $@

setup: $(VENV)/.installed

build: setup
	$(PY) setup.py build_ext --inplace

test: build
	$(PY) -m pytest -q tests

# The optional peers (nnAudio, tftb) are installed best-effort: a failure is logged to
# results/peers_install.log and the suite reports those rows as "not run" with the import error.
# tftb goes in with --no-deps: its metadata pins numpy<2, which would downgrade numpy, and it runs
# fine on numpy 2 (its other dependencies, scipy and matplotlib, are installed by `setup`).
bench: build
	@mkdir -p results
	@( $(PY) -m pip install nnaudio && $(PY) -m pip install --no-deps tftb ) > results/peers_install.log 2>&1 \
	  && echo "optional peers nnaudio, tftb: installed" \
	  || echo "optional peers: pip install FAILED (see results/peers_install.log); their rows will say not run"
	$(PY) -m benchmarks.run

# The accuracy table (benchmarks/accuracy.py; README "Does it learn?"). Needs espeak-ng for the
# spoken digits: installed here with apt-get when missing (the clips are cached in ~/.cache/lwvd_cuda).
# SpeechBrain's LEAF (a front end of --full-grid) is installed best-effort. ACCURACY_ARGS passes flags.
ACCURACY_ARGS ?=
accuracy: build
	@command -v espeak-ng >/dev/null || { apt-get update && apt-get install -y espeak-ng; } || { \
	  echo "espeak-ng is missing and could not be installed: run 'sudo apt-get install -y espeak-ng'"; exit 1; }
	@$(PY) -m pip install "torchaudio==2.11.0" speechbrain > /dev/null 2>&1 \
	  || echo "optional speechbrain (LEAF) not installed: its rows will say skipped"
	$(PY) -m benchmarks.accuracy $(ACCURACY_ARGS)

accuracy-smoke: build
	$(PY) -m benchmarks.accuracy --smoke --out results/accuracy_smoke

example: build
	$(PY) examples/chirp_classification.py

clean:
	rm -rf build lwvd_cuda/*.so
