"""Reading and damaging a run's workdir the way the CLI tests need (independent of jaxembed's own readers)."""

from __future__ import annotations

import hashlib
import json
import pathlib


def logged_steps(workdir: pathlib.Path) -> list[int]:
    """Steps of the complete rows of a (possibly running) run's metrics.jsonl."""
    path = workdir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass  # a row being written
    return steps


def snapshot(directory: pathlib.Path) -> dict[str, str]:
    """Every file under ``directory``: relative path -> sha256 of its bytes."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def corrupt(step_dir: pathlib.Path) -> None:
    """Truncates the array data files of a checkpoint's train state (a half-written step)."""
    data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files, f"no array data files under {step_dir}/state: has orbax's layout changed?"
    for p in data_files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
