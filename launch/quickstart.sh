#!/usr/bin/env bash
# Quickstart: make a virtual environment, install radial_jax, train the default model (configs/tiny.yaml)
# on the embedded corpus. Extra arguments go to `radial train`, e.g. train.steps=100 run.dir=/tmp/r.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating virtual environment in .venv"
  "$PYTHON" -m venv .venv
fi
echo "== installing radial_jax (first time: a few minutes)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
echo "== training configs/tiny.yaml"
.venv/bin/radial train configs/tiny.yaml "$@"
echo "== next: .venv/bin/radial eval --checkpoint runs/tiny   (or the run.dir you chose)"
