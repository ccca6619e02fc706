"""The CLI tests' harness: running ``jaxembed`` in subprocesses, and reading and damaging a run's workdir.

Readers are independent of jaxembed's own (plain json, sha256), so a bug there cannot hide here.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys

HANG_GUARD = 300  # seconds; a hang guard, not a speed requirement


def command(args) -> list[str]:
    """``python -m jaxembed.cli ARGS``."""
    return [sys.executable, "-m", "jaxembed.cli", *map(str, args)]


def jaxembed(args, env: dict, timeout: float = HANG_GUARD, **kwargs) -> subprocess.CompletedProcess:
    """Runs ``python -m jaxembed.cli ARGS`` to completion, from a folder without a jaxembed/ in it.

    ``python -m`` puts the working directory first on sys.path, so the cwd is the env's cache folder
    (the installed, or PYTHONPATH, package is what runs).
    """
    return subprocess.run(
        command(args), env=env, cwd=env["JAXEMBED_CACHE"], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def start(args, env: dict, out_dir: pathlib.Path, name: str, *, ignore_sigint: bool = False) -> subprocess.Popen:
    """Starts ``python -m jaxembed.cli ARGS``; stdout/stderr go to ``out_dir/name.{out,err}``.

    ``ignore_sigint`` starts it as ``nohup`` or a script's ``cmd &`` would: with SIGINT ignored
    (by a shell's ``trap`` and ``exec``, not a ``preexec_fn`` fork of this multithreaded process).
    """
    cmd = command(args)
    if ignore_sigint:
        cmd = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *map(str, cmd)]
    # Files, not pipes: a child blocked on a full pipe would look like a hang.
    out, err = open(out_dir / f"{name}.out", "w"), open(out_dir / f"{name}.err", "w")
    proc = subprocess.Popen(cmd, env=env, cwd=env["JAXEMBED_CACHE"], stdout=out, stderr=err)
    out.close()
    err.close()
    proc.out_path, proc.err_path = out_dir / f"{name}.out", out_dir / f"{name}.err"
    return proc


def finish(proc: subprocess.Popen, timeout: float = HANG_GUARD) -> tuple[int, str, str]:
    """Waits for a started run: ``(exit code, stdout, stderr)``."""
    try:
        code = proc.wait(timeout=timeout)
    finally:
        proc.kill()
    return code, proc.out_path.read_text(), proc.err_path.read_text()


def metrics_rows(workdir: pathlib.Path) -> list[dict]:
    """The complete rows of a run's metrics.jsonl, read with plain json (a row being written is skipped)."""
    path = workdir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a row being written
    return rows


def logged_steps(workdir: pathlib.Path) -> list[int]:
    """Steps of the complete rows of a (possibly running) run's metrics.jsonl."""
    return [row["step"] for row in metrics_rows(workdir) if "step" in row]


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
