#!/usr/bin/env bash
# One command that checks the CUDA path on a machine with one GPU (H100/H200: under 8 minutes):
# build for that GPU, tests/test_cuda_build.py, CUDA vs CPU kernels vs the float64 reference on
# >= 40 configurations, compute-sanitizer memcheck/racecheck/synccheck on a small case, and
# CUDA-event / CUDA-graph timings at configuration S -> ONE JSON (default results/gpu_check.json),
# rewritten after every stage, with the full output in the .log beside it. The stages and their
# time limits are in tools/gpu_check.py. Without a GPU it dry-runs: every GPU stage says "no GPU".
#
#   tools/gpu_check.sh [--out FILE.json] [--budget SECONDS] [--dry-run]
#
# Python: $PYTHON, else the project's .venv, else python3 (on a GPU image: the one holding torch).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then py="$PYTHON"
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3; fi
if ! "$py" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" 2>/dev/null; then
  echo "gpu_check: $py cannot import torch; set PYTHON to an interpreter that has it" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1
# A hard stop a little past the script's own budget (default 450 s): 8 minutes in all.
exec timeout -k 5 475 "$py" tools/gpu_check.py "$@"
