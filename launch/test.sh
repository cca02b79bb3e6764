#!/usr/bin/env bash
# Install radial_jax with its test extra into .venv and run the whole test suite (slow tests included).
# Extra arguments go to pytest, e.g. `bash launch/test.sh -m "not slow" -x`.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || exit 1
fi
.venv/bin/python -m pip install --quiet --upgrade pip || exit 1
# The pinned torch first, so the test extra's unpinned `torch` is met and never pulls another (multi-GB) build.
.venv/bin/python -m pip install --quiet torch==2.13.0 || exit 1
.venv/bin/python -m pip install --quiet -e ".[test,tpu]" || exit 1
# The import floors in pyproject.toml ([tool.importlinter]): a module never imports from a floor above it.
.venv/bin/lint-imports || { echo "lint-imports: an import breaks the floors in pyproject.toml"; exit 1; }
# One pytest worker per core (pytest-xdist); a test file stays on one worker, so the trained runs its
# tests share are made once. RADIAL_TEST_WORKERS=0 runs everything in this process.
.venv/bin/python -m pytest -q --durations=15 -n "${RADIAL_TEST_WORKERS:-auto}" --dist loadfile "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5): nothing selected"
  exit 0
fi
exit "$rc"
