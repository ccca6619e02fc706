"""Shared pytest fixtures."""

from __future__ import annotations

import pathlib

import pytest

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
