"""Shared test setup: a persistent XLA compilation cache for the whole run, one corpus cache.

Many tests compile the same tiny programs (each builds its own jitted step, and CLI tests run in
subprocesses); the persistent cache lets every compile after the first be a disk read. The variables
are set before any test module imports jax, so subprocesses inherit them too.
"""

import os
import tempfile
from pathlib import Path

import pytest

_XLA_CACHE = Path(os.environ.get("RADIAL_TEST_XLA_CACHE")
                  or Path(tempfile.gettempdir()) / f"radial_jax_test_xla_cache_{os.getuid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_XLA_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# libtpu (the `tpu` extra, for `radial compile` tests) on a host without TPUs: no metadata queries, and
# no exclusive lock, so test processes running side by side can all load it.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# Tests are compile-bound (tiny shapes, a few steps each): XLA's CPU backend at optimisation level 0
# skips most of LLVM's work, so programs compile in about half the time and run slower, which tiny
# shapes do not notice. The numbers a program computes do not depend on it. Subprocesses inherit it;
# RADIAL_TEST_XLA_OPT=1 keeps XLA's default (e.g. to time something under pytest).
_FLAGS = os.environ.get("XLA_FLAGS", "")
if os.environ.get("RADIAL_TEST_XLA_OPT") != "1" and "xla_backend_optimization_level" not in _FLAGS:
    os.environ["XLA_FLAGS"] = f"{_FLAGS} --xla_backend_optimization_level=0".strip()


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus_cache"))
