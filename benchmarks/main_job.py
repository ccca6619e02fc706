"""The README main job (``jaxembed train --workdir W``), end to end: where its wall time goes.

Runs the command in a child process under ``cProfile`` twice: first with an empty jaxembed cache
(a new machine: the python-docs corpus is built and every program compiled), then again with
that cache warm (the corpus and JAX's persistent compilation cache are reused; a new workdir, so
it trains from step 0). Each run's wall time is split by the cumulative time of the functions
that own each phase, on the main thread: imports (``importlib``'s ``_find_and_load``), data
(``pipeline.get_datasets``), compile (``Trainer.from_config`` builds and compiles the steps),
steps (the loop minus its evaluations and checkpoint calls), evals, checkpoints (save, wait,
close on the main thread; orbax writes in the background) and the report. What is left (the
process start, config loading, the initial evaluation's dispatch, the workdir) is "other".
cProfile adds overhead to Python-heavy phases (imports, Grain's iterator, the loop's
bookkeeping), so a third run, warm and not profiled, gives the true wall time and the steady time
per step; user and kernel CPU come from ``resource`` for each child.

Example::

  python -m benchmarks.run --sections main
  python -m benchmarks.main_job          # the section alone, printed as a table
"""

from __future__ import annotations

import json
import os
import pathlib
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time

PHASES = ("imports", "data", "compile", "steps", "evals", "checkpoints", "report", "other")


def _find(stats: pstats.Stats, path_part: str, name: str) -> tuple | None:
    for key in stats.stats:
        if key[2] == name and path_part in key[0]:
            return key
    return None


def _cumulative(stats: pstats.Stats, path_part: str, name: str, *, called_from: tuple | None = None) -> float:
    """Cumulative seconds of one function, optionally only of its calls from ``called_from``."""
    key = _find(stats, path_part, name)
    if key is None:
        return 0.0
    _, _, _, cumulative, callers = stats.stats[key]
    if called_from is None:
        return cumulative
    return callers.get(called_from, (0, 0, 0, 0))[3]


def phases(stats: pstats.Stats, wall_s: float) -> dict[str, float]:
    """Seconds per phase (``PHASES``) of one profiled run whose whole process took ``wall_s``."""
    loop = _find(stats, "jaxembed/train/loop.py", "loop")
    evals_in_loop = _cumulative(stats, "jaxembed/train/trainer.py", "evaluate", called_from=loop)
    saves_in_loop = sum(
        _cumulative(stats, "jaxembed/train/checkpoint.py", name, called_from=loop) for name in ("save", "wait")
    )
    out = {
        "imports": _cumulative(stats, "importlib._bootstrap", "_find_and_load"),
        "data": _cumulative(stats, "jaxembed/data/pipeline.py", "get_datasets"),
        "compile": _cumulative(stats, "jaxembed/train/trainer.py", "from_config"),
        "steps": _cumulative(stats, "jaxembed/train/loop.py", "loop") - evals_in_loop - saves_in_loop,
        "evals": _cumulative(stats, "jaxembed/train/trainer.py", "evaluate"),
        "checkpoints": sum(
            _cumulative(stats, "jaxembed/train/checkpoint.py", name) for name in ("save", "wait", "close", "restore")
        ),
        "report": _cumulative(stats, "jaxembed/report/writer.py", "write_run_report"),
    }
    out["other"] = max(wall_s - sum(out.values()), 0.0)
    return out


def run_once(cache: pathlib.Path, workdir: pathlib.Path, profile: pathlib.Path | None) -> dict:
    """Runs the main job once in a child (under cProfile unless ``profile`` is None).

    Returns its wall, user and kernel CPU seconds, the steady seconds per step (from the
    ``tokens_per_sec`` of ``metrics.jsonl``'s rows after the first, which include compiling)
    and, when profiled, the phase seconds.
    """
    env = {**os.environ, "JAXEMBED_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    env.pop("JAXEMBED_COMPILATION_CACHE", None)  # the default place, inside the cache
    command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []), "-m", "jaxembed.cli"]
    command += ["train", "--workdir", str(workdir), "--no-progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cache.parent, timeout=1800)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"the main job failed ({done.returncode}):\n{done.stderr[-2000:]}")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((workdir / "config.json").read_text())
    tokens_per_step = config["data"]["batch_size"] * config["data"]["max_length"]
    speeds = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r][1:]
    return {
        "wall_s": wall,
        "user_s": user,
        "sys_s": system,
        "sys_share": system / (user + system),
        "step_s": tokens_per_step / statistics.median(speeds) if speeds else None,
        "phases_s": phases(pstats.Stats(str(profile)), wall) if profile else None,
        "last_line": done.stdout.strip().splitlines()[-1],
    }


def step_floor_s(hw: dict) -> float:
    """The tiny config's train step at the hardware floor: matmul FLOPs at ``hw``'s peak + AdamW bytes at its bandwidth."""
    from benchmarks import harness
    from jaxembed import config as config_lib

    c = config_lib.named_config("tiny")
    b, length, d = c.data.batch_size, c.data.max_length, c.model.features
    flops = harness.train_flops(b, length, d, harness.GPT2_VOCAB)
    return (
        flops / hw["matmul_flops"]["peak"]
        + harness.optimizer_bytes(harness.GPT2_VOCAB, length, d) / hw["bandwidth_Bps"]
    )


def section(hw: dict | None = None) -> dict:
    """The main job on a new machine (empty cache) and re-run (cache warm), with ``os.getloadavg()``.

    With ``hw`` (``harness.hardware``'s probes), also the tiny step's floor (``step_floor_s``)
    and the number of steps, so the table can give the steps' share of the floor.
    """
    from jaxembed import config as config_lib

    with tempfile.TemporaryDirectory(prefix="jaxembed-main-job-") as tmp:
        tmp = pathlib.Path(tmp)
        cache = tmp / "cache"
        cache.mkdir()
        load = os.getloadavg()
        first = run_once(cache, tmp / "run-first", tmp / "first.prof")
        again = run_once(cache, tmp / "run-again", tmp / "again.prof")
        plain = run_once(cache, tmp / "run-plain", None)
    out = {
        "first_run": first,
        "warm_rerun": again,
        "warm_rerun_unprofiled": plain,
        "load_start": list(load),
        "load_end": list(os.getloadavg()),
    }
    if hw is not None:
        out["steps"] = int(config_lib.named_config("tiny").train.steps)
        out["step_floor_s"] = step_floor_s(hw)
    return out


def markdown(result: dict) -> list[str]:
    """The section's table: one row per run, wall seconds per phase."""
    lines = [
        "| run | wall s | " + " | ".join(PHASES) + " | user s | sys s | sys share |",
        "| --- | ---: | " + " | ".join("---:" for _ in PHASES) + " | ---: | ---: | ---: |",
    ]
    for name, label in [
        ("first_run", "new machine (empty cache)"),
        ("warm_rerun", "re-run (cache warm)"),
        ("warm_rerun_unprofiled", "re-run, not profiled"),
    ]:
        r = result.get(name)
        if r is None:
            continue
        phases_s = r["phases_s"]
        cells = " | ".join("–" if phases_s is None else f"{phases_s[p]:.1f}" for p in PHASES)
        lines.append(
            f"| {label} | {r['wall_s']:.1f} | {cells} | {r['user_s']:.1f} | {r['sys_s']:.1f} | {r['sys_share']:.0%} |"
        )
    lines.append(f"\nLoad average {result['load_start'][0]:.1f} at the start, {result['load_end'][0]:.1f} at the end.")
    plain = result.get("warm_rerun_unprofiled")
    if result.get("step_floor_s") and plain and plain["step_s"]:
        floor, per_step = result["step_floor_s"], plain["step_s"]
        profiled = result["warm_rerun"]["phases_s"]["steps"] / result["steps"]
        lines.append(
            f"Steps, not profiled: {per_step * 1e3:.1f} ms each (steady tokens/s of metrics.jsonl), "
            f"{per_step / floor:.1f}x the hardware floor of {floor * 1e3:.1f} ms (the step's matmul FLOPs at the "
            f"probed matmul rate plus AdamW's bytes at the probed bandwidth); {profiled * 1e3:.1f} ms per step profiled "
            "(the steps phase over the steps)."
        )
    return lines


if __name__ == "__main__":
    print("\n".join(markdown(section())))
