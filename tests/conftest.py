"""Shared pytest fixtures, and a fresh cache home for the whole run.

``pytest_configure`` points every cache the tests write through (jaxembed's corpora,
matplotlib's font cache, tiktoken's files, XDG's cache home, jaxembed's compiled programs) at one new temporary folder
before any test module is imported, so a developer's warm cache and a new machine give the
same results; subprocesses inherit it through ``os.environ``. Tests of the cache behaviour
set their own.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

_CACHE_VARIABLES = {
    "JAXEMBED_CACHE": "jaxembed",
    # One compilation cache for every jaxembed process of the run: each program compiles once.
    "JAXEMBED_COMPILATION_CACHE": "xla",
    "MPLCONFIGDIR": "matplotlib",
    "TIKTOKEN_CACHE_DIR": "tiktoken",
    "XDG_CACHE_HOME": "xdg",
}
_fresh_home: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _fresh_home
    _fresh_home = tempfile.mkdtemp(prefix="jaxembed-tests-cache-")
    for variable, folder in _CACHE_VARIABLES.items():
        os.environ[variable] = os.path.join(_fresh_home, folder)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _fresh_home is not None:
        shutil.rmtree(_fresh_home, ignore_errors=True)


_CORPUS = pathlib.Path(__file__).resolve().parents[2] / "shared/data/romeo_juliet_gutenberg.txt"


@pytest.fixture(scope="session")
def corpus_path() -> pathlib.Path:
    """The shared Gutenberg Romeo and Juliet text (kept outside the repo)."""
    if not _CORPUS.is_file():
        pytest.fail(f"shared test corpus missing: expected {_CORPUS}", pytrace=False)
    return _CORPUS


@pytest.fixture(scope="session")
def text_path(tmp_path_factory, corpus_path) -> pathlib.Path:
    """The first 40,000 characters of the shared corpus: enough for short CLI runs."""
    path = tmp_path_factory.mktemp("text") / "rj_head.txt"
    path.write_text(corpus_path.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Environment for ``jaxembed`` subprocesses: CPU only, a corpus cache of the module's own (also the cwd)."""
    return {**os.environ, "JAXEMBED_CACHE": str(tmp_path_factory.mktemp("cache")), "JAX_PLATFORMS": "cpu"}
