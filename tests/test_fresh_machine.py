"""The suite sees a new machine: every cache points at one fresh folder (see conftest.py)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

CACHE_VARIABLES = ("JAXEMBED_CACHE", "MPLCONFIGDIR", "TIKTOKEN_CACHE_DIR", "XDG_CACHE_HOME")


def test_every_cache_points_at_a_fresh_folder() -> None:
    homes = {os.environ[v] for v in CACHE_VARIABLES}
    assert len(homes) == len(CACHE_VARIABLES)
    for value in homes:
        assert value.startswith(tempfile.gettempdir()) and "jaxembed-tests-cache-" in value, value
        assert not value.startswith(str(pathlib.Path.home() / ".cache"))


def test_subprocesses_inherit_the_fresh_cache() -> None:
    code = "from jaxembed.text.corpus import cache_dir; print(cache_dir())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == os.environ["JAXEMBED_CACHE"]
