"""Shared fixtures: one builtin-corpus cache for the whole session (it builds in about a second)."""

import pytest


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus_cache"))
