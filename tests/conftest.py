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
