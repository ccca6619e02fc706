"""The numbers README.md, benchmarks/README.md and configs/ quote about the corpora are the computed ones.

``scripts/readme_figures.py`` computes them (token counts of Romeo and Juliet as the
walk-through and as training read it, the active vocabulary K, the tiny config's epoch, the
python-docs corpus of this Python); these tests run its cheap part, so a quote cannot drift
from the code again. Its ``--measure`` part (training runs, minutes) is run by hand.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

from jaxembed.text import corpus, get_encoding

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("readme_figures", REPO / "scripts" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures(script, corpus_path):
    return {**script.romeo_juliet_figures(corpus_path), **script.python_docs_figures()}


def test_figures_count_what_the_commands_read(figures, corpus_path):
    # Independently of the library's splits: the whole file (the walk-through, the seed) and the
    # body between Gutenberg's START and END lines (training).
    enc = get_encoding("gpt2")
    raw = corpus_path.read_text(encoding="utf-8").removeprefix("\ufeff").replace("\r\n", "\n")
    start = raw.index("\n", raw.index("*** START OF")) + 1
    body = raw[start : raw.index("*** END OF", start)]
    assert figures["rj.tokens_raw"] == f"{len(enc.encode(raw)):,}"
    ids = enc.encode(body)
    assert figures["rj.tokens"] == f"{len(ids):,}"
    assert figures["rj.active_vocab"] == f"{len(set(ids)):,}"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    docs = corpus.python_docs_text()
    assert figures[f"python_docs.tokens.{version}"] == f"{len(enc.encode(docs, allowed_special='all')):,}"


def test_readme_and_configs_quote_the_computed_figures(script, figures):
    differences, unchecked = script.check(figures)
    assert differences == []
    checked = {q.figure for q in script.QUOTES} - {line.split(": ")[1].split(" ")[0] for line in unchecked}
    assert "rj.active_vocab" in checked and "rj.tokens" in checked and "rj.tokens_raw" in checked
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if version in ("3.11", "3.12", "3.13"):  # the versions the README quotes
        assert f"python_docs.tokens.{version}" in checked
    assert all("needs --measure" in line or "python_docs" in line for line in unchecked), unchecked


def test_check_lists_each_quote_that_differs(script, figures):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    drifted = readme.replace("(4,455 for Romeo and Juliet)", "(5,196 for Romeo and Juliet)")
    drifted = drifted.replace("45,743 tokens", "45,000 tokens")
    drifted = re.sub(r"the tiny config's epoch is\s+160", "an epoch of the tiny config is 160", drifted)  # reworded

    def read(path):
        return drifted if path == "README.md" else (REPO / path).read_text(encoding="utf-8")

    differences, _ = script.check(figures, read=read)
    (reworded,) = [q for q in script.QUOTES if q.figure == "rj.tiny_steps_per_epoch"]

    def line(quote):
        return drifted[: drifted.index(quote)].count("\n") + 1

    assert differences == [
        f"README.md:{line('(5,196 for Romeo')}: quotes 5,196 for rj.active_vocab; it is 4,455",
        f"README.md:{line('45,000 tokens')}: quotes 45,000 for rj.tokens; it is 45,743",
        f"README.md: no quote of rj.tiny_steps_per_epoch matches {reworded.pattern!r}",
    ]


def test_the_script_checks_from_the_command_line(corpus_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "readme_figures.py"), "--check", "--text", str(corpus_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rj.active_vocab          4,455" in proc.stdout
    assert " 0 differ." in proc.stdout
