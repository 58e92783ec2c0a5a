# The README's commands: `make bench` (the main job), `make test` (what CI runs), `make develop`.
# Each creates .venv on first use, installs everything, builds the extension, then runs.
# Python 3.10+ (torch 2.14.1 has no wheel for older Pythons).
# TORCH: the pip spec of torch. TORCH_INDEX: an index URL for torch only, e.g. PyTorch's CPU wheel
# index `make TORCH_INDEX=https://download.pytorch.org/whl/cpu test` for a CPU-only torch (the
# extension is then built CPU-only). On this project's machines `TORCH=torch==2.13.0` happens to
# resolve to a local CPU-only wheel; elsewhere that version is a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1
TORCH_INDEX ?=
export MAX_JOBS ?= 2

.PHONY: setup build develop test install-check bench peers example accuracy accuracy-smoke clean

$(VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -U pip setuptools wheel ninja
	$(PY) -m pip install "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install numpy pybind11 pytest hypothesis scipy tqdm matplotlib soundfile
	# Two small peers, so that the benchmark tests of their entries run instead of skipping (seconds;
	# torchaudio 2.11.0 declares no dependencies and leaves torch as it is).
	$(PY) -m pip install "torchaudio==2.11.0" dstft
	touch $@

setup: $(VENV)/.installed

# In place, for working on the checkout (imports from the checkout's root only).
build: setup
	$(PY) setup.py build_ext --inplace

# Editable install into the venv: `import lwvd_cuda` from any folder; rebuilds the extension.
develop: setup
	$(PY) -m pip install --no-build-isolation -e .

test: build
	$(PY) -m pytest -q tests

# The README's install lines from fresh venvs (see .ci/install_check): a few minutes.
install-check:
	PYTHON=$(PYTHON) TORCH="$(TORCH)" .ci/install_check

# The optional peers, each best-effort: a failure is logged to results/peers_install.log and the
# suite reports those rows as "not run" with the import error.
# * tftb goes in with --no-deps: its metadata pins numpy<2 (a downgrade); it runs on numpy 2 (its
#   other dependencies, scipy and matplotlib, are installed by `setup`).
# * SpeechBrain's LEAF needs torchaudio at import: torchaudio 2.11.0 declares no dependencies, so it
#   installs beside torch 2.14 without touching it (newer torchaudio wheels pin their own torch).
PEERS := nnaudio dstft "torchaudio==2.11.0 speechbrain" "--no-deps tftb"
peers: setup
	@mkdir -p results
	@: > results/peers_install.log
	@for p in $(PEERS); do \
	  if $(PY) -m pip install $$p >> results/peers_install.log 2>&1; then echo "optional peer $$p: installed"; \
	  else echo "optional peer $$p: pip install FAILED (see results/peers_install.log); its rows will say not run"; fi; \
	done

bench: build peers
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
