#!/usr/bin/env bash
# Quickstart: make a virtual environment, install radial_jax, and train the radial model
# (configs/radial_tiny.yaml) on the embedded corpus. It ends by printing the eval loss, the mean
# active depth, the routing heatmap, the TensorBoard command and a `radial generate` command to try.
# Extra arguments go to `radial train`, e.g. train.steps=100 run.dir=/tmp/r.
# Environment: PYTHON (the interpreter that makes the venv, default python3), VENV (default .venv),
# INSTALL=0 to use VENV as it is (radial_jax already installed there).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ "${INSTALL:-1}" != 0 ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  echo "== installing radial_jax (first time: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e .
fi
echo "== training configs/radial_tiny.yaml (radial: a prefix block + a routed pool of 3)"
"$VENV/bin/radial" train configs/radial_tiny.yaml "$@"
echo "== the commands above run inside the venv: source $VENV/bin/activate"
