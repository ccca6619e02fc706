"""``jaxembed train --workdir W`` keeps a run safe: real processes, files and signals.

Each test reproduces one way a run can go wrong with the real CLI in
subprocesses (a resume with other settings, two runs on one workdir, a
``kill -9``, workdirs that are not shared between processes, SIGTERM/SIGINT,
a full disk, bad flags, an offline tokenizer, a damaged checkpoint) and checks
that the user gets one clear ``jaxembed ...`` line on stderr (no traceback, no
orbax/TensorStore noise), the documented exit code, that the checkpoints and
metrics already on disk are untouched, and that a rerun resumes.

One finished 20-step run (module scope) is the reference that interrupted runs
must reproduce bitwise; tests that change a workdir copy it first.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import portpicker
import pytest
from run_files import HANG_GUARD, corrupt, finish, jaxembed, logged_steps, metrics_rows, snapshot, start

from jaxembed.config import CONFIG_DIR
from jaxembed.train import run as run_lib

STEPS = 20
NOISE = ("Traceback", "Event loop is closed", "absl", "orbax", "tensorstore", "RESOURCE_EXHAUSTED", "E0000", "W0000")


# --- Helpers ---------------------------------------------------------------


def train_args(workdir, text_path, *extra):
    # tensorboard=False: no event files; a resume may change it freely.
    return [
        "train",
        "--config",
        str(CONFIG_DIR / "tiny.py"),
        "--workdir",
        str(workdir),
        "--text",
        str(text_path),
        "--no-progress",
        f"--config.train.steps={STEPS}",
        "--config.train.checkpoint_every=5",
        "--config.train.log_every=5",
        "--config.train.eval_every=5",
        "--config.train.eval_batches=2",
        "--config.train.keep_checkpoints=2",
        "--config.train.tensorboard=False",
        "--config.data.batch_size=4",
        "--config.data.max_length=8",
        "--config.data.stride=8",
        *extra,
    ]


def assert_one_line(stderr: str, prefix: str = "jaxembed train: error: ") -> str:
    """stderr is exactly one line starting with ``prefix``; returns it."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), f"expected one {prefix!r} line, got:\n{stderr[-3000:]}"
    for word in NOISE:
        assert word not in stderr, stderr
    return lines[0]


def wait_for(condition, proc: subprocess.Popen, what: str, timeout=HANG_GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}:\n{proc.err_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.005)


def step_dirs(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def assert_same_tables(workdir, reference):
    run, ref = run_lib.load_run(workdir), run_lib.load_run(reference)
    assert run.step == ref.step == STEPS
    np.testing.assert_array_equal(run.token_VxD, ref.token_VxD)
    np.testing.assert_array_equal(run.position_LxD, ref.position_LxD)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, text_path, env):
    """One uninterrupted run: its workdir."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    proc = jaxembed(train_args(workdir, text_path), env)
    assert proc.returncode == 0, proc.stderr
    assert step_dirs(workdir) == [15, 20]
    return workdir


@pytest.fixture
def finished_copy(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    return workdir


# --- 1, 2: resuming with other settings -------------------------------------


def test_resume_with_other_shapes_or_data_is_refused_and_touches_nothing(finished_copy, text_path, env, tmp_path):
    checkpoints, metrics = snapshot(finished_copy / "checkpoints"), (finished_copy / "metrics.jsonl").read_bytes()
    config = (finished_copy / "config.json").read_bytes()

    proc = jaxembed(
        train_args(finished_copy, text_path, "--config.model.features=16", "--config.seed=7", "--config.data.stride=4"),
        env,
    )
    assert proc.returncode == 2
    line = assert_one_line(proc.stderr)
    assert f"workdir {finished_copy} holds a run with other settings" in line
    for field, old, new in [("model.features", 32, 16), ("seed", 0, 7), ("data.stride", 8, 4)]:
        assert f"{field}: {old} in the run, {new} now" in line, line

    other_text = tmp_path / "other.txt"
    other_text.write_text(text_path.read_text(encoding="utf-8")[::-1], encoding="utf-8")
    proc = jaxembed(train_args(finished_copy, other_text), env)
    assert proc.returncode == 2
    line = assert_one_line(proc.stderr)
    assert str(text_path) in line and str(other_text) in line, line

    assert snapshot(finished_copy / "checkpoints") == checkpoints
    assert (finished_copy / "metrics.jsonl").read_bytes() == metrics
    assert (finished_copy / "config.json").read_bytes() == config
    assert not (finished_copy / "config_changes.jsonl").exists()

    # The right settings resume; more steps and another peak rate are allowed, said out loud and recorded.
    proc = jaxembed(
        train_args(finished_copy, text_path, "--config.train.steps=25", "--config.optim.learning_rate=0.01"), env
    )
    assert proc.returncode == 0, proc.stderr
    assert f"Resuming from step {STEPS}" in proc.stdout
    warning = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warning) == 1 and warning[0].startswith("warning: Resuming with changed settings:"), proc.stderr
    assert "train.steps 20 -> 25" in warning[0] and "optim.learning_rate 0.02 -> 0.01" in warning[0]
    assert re.search(r"re-planned for 25 steps: step 21 uses [\d.e-]+ \(the old plan: [\d.e-]+\)", warning[0])
    changes = [json.loads(line) for line in (finished_copy / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [
        {
            "step": STEPS,
            "changes": {
                "optim.learning_rate": {"from": 0.02, "to": 0.01},
                "train.steps": {"from": STEPS, "to": 25},
            },
        }
    ]
    assert logged_steps(finished_copy) == [0, 5, 10, 15, 20, 25]
    assert step_dirs(finished_copy) == [20, 25]


# --- 3: one run per workdir --------------------------------------------------


def test_two_runs_started_together_one_refuses_at_once(text_path, env, tmp_path):
    workdir = tmp_path / "run"
    procs = [start(train_args(workdir, text_path), env, tmp_path, name) for name in ("a", "b")]
    ended = {}
    deadline = time.monotonic() + HANG_GUARD
    while len(ended) < 2:
        for proc in procs:
            if proc not in ended and proc.poll() is not None:
                ended[proc] = [p.poll() for p in procs]  # who was still running when it ended
        assert time.monotonic() < deadline, "the runs hang"
        time.sleep(0.01)
    results = {proc: finish(proc) for proc in procs}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 2], {p.pid: r for p, r in results.items()}
    (winner,) = [p for p in procs if results[p][0] == 0]
    (loser,) = [p for p in procs if results[p][0] == 2]
    assert winner.returncode == 0 and ended[loser][procs.index(winner)] is None  # refused while the other ran
    line = assert_one_line(results[loser][2])
    assert re.fullmatch(
        rf"jaxembed train: error: workdir {re.escape(str(workdir))} is in use by pid {winner.pid} on host "
        rf"{re.escape(socket.gethostname())}; wait for that run to finish \(or stop it\), or choose another --workdir\.",
        line,
    ), line
    assert logged_steps(workdir) == [0, 5, 10, 15, 20]  # the winner's rows, once each
    assert step_dirs(workdir) == [15, 20]


def test_kill_9_leaves_no_stale_lock(finished, text_path, env, tmp_path):
    workdir = tmp_path / "run"
    holder = start(train_args(workdir, text_path), env, tmp_path, "holder")
    try:
        wait_for(lambda: (workdir / "checkpoints" / "5").is_dir(), holder, "checkpoint 5")
        os.kill(holder.pid, signal.SIGSTOP)  # a hung run: it holds the lock but makes no progress
        files = snapshot(workdir)
        started = time.monotonic()
        refused = jaxembed(train_args(workdir, text_path), env)
        assert time.monotonic() - started < 30  # refused before loading data or compiling
        assert refused.returncode == 2
        assert f"is in use by pid {holder.pid} on host" in assert_one_line(refused.stderr)
        assert snapshot(workdir) == files  # the holder's checkpoints and metrics, byte for byte
        os.kill(holder.pid, signal.SIGKILL)
    finally:
        holder.kill()
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert (workdir / ".lock").exists()  # the file stays; the OS dropped the lock with the process

    rerun = jaxembed(train_args(workdir, text_path), env)
    assert rerun.returncode == 0, rerun.stderr
    assert re.search(r"Resuming from step (5|10|15)\b", rerun.stdout), rerun.stdout
    assert_same_tables(workdir, finished)


# --- 4: multi-process runs need one shared workdir ---------------------------


def test_processes_with_different_workdirs_all_stop_with_one_line(text_path, env, tmp_path):
    port = portpicker.pick_unused_port()
    procs = [
        start(
            train_args(
                tmp_path / f"host{i}" / "run",
                text_path,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--init-timeout",
                "60",
            ),
            env,
            tmp_path,
            f"p{i}",
        )
        for i in range(2)
    ]
    started = time.monotonic()
    results = [finish(proc, timeout=120) for proc in procs]
    assert time.monotonic() - started < 120
    for i, (code, _, err) in enumerate(results):
        assert code == 2, err[-3000:]
        line = assert_one_line(err)
        assert f"workdir {tmp_path / f'host{i}' / 'run'} is not the same folder on every process" in line, line
        assert line.endswith("--workdir must be the same shared directory on every host.")
        assert not (tmp_path / f"host{i}" / "run").exists()  # no debris


# --- 5: SIGTERM / SIGINT stop cleanly and resume exactly ---------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_resume_is_exact(finished, text_path, env, tmp_path, signum):
    workdir = tmp_path / "run"
    proc = start(train_args(workdir, text_path), env, tmp_path, "run")
    try:
        wait_for(lambda: logged_steps(workdir)[-1:] >= [5], proc, "step 5")
        os.kill(proc.pid, signum)
        code, out, err = finish(proc)
    finally:
        proc.kill()
    name = signal.Signals(signum).name
    assert code == 128 + signum, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert (
        lines[0] == f"warning: {name} received: finishing step and saving a checkpoint (send it again to stop at once)."
    )
    match = re.fullmatch(
        rf"jaxembed train: stopped by {name} after step (\d+); a checkpoint of it was saved\. "
        r"Rerun the same command to resume\.",
        lines[1],
    )
    assert len(lines) == 2 and match, err
    for word in NOISE:
        assert word not in err
    step = int(match.group(1))
    assert 5 <= step < STEPS
    assert step_dirs(workdir)[-1] == step
    rows = metrics_rows(workdir)
    # Saved at once, without an evaluation (one step plus one save): its training loss is checked finite,
    # and a checkpoint without a validation loss is never the best one.
    assert rows[-1]["step"] == step and math.isfinite(rows[-1]["train_loss"]) and "val_loss" not in rows[-1]
    assert not (workdir / "report.md").exists()

    resumed = jaxembed(train_args(workdir, text_path), env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from step {step}" in resumed.stdout
    assert_same_tables(workdir, finished)


def test_a_signal_between_metrics_rows_is_serviced_within_a_step_and_a_save(text_path, env, tmp_path):
    # Rows (the loop's host syncs) are 10,000 steps apart: the stop must not wait for the next one,
    # nor for a queue of steps dispatched ahead of the device. Cloud preemption gives about 30 s.
    workdir = tmp_path / "run"
    args = train_args(workdir, text_path, "--config.train.steps=100000", "--config.train.log_every=10000")
    args += ["--config.train.eval_every=100000", "--config.train.checkpoint_every=100000"]
    proc = start(args, env, tmp_path, "run")
    try:
        wait_for(lambda: logged_steps(workdir) == [0], proc, "the step-0 row")
        time.sleep(2)  # well inside the loop
        os.kill(proc.pid, signal.SIGTERM)
        sent = time.monotonic()
        code, _, err = finish(proc, timeout=120)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert code == 128 + signal.SIGTERM, err
    (step,) = step_dirs(workdir)
    assert 1 <= step < 10000 and logged_steps(workdir) == [0, step]
    assert elapsed < 30, f"{elapsed:.1f} s from SIGTERM to exit"


def test_a_sigint_the_parent_ignores_stays_ignored_and_sigterm_still_stops(text_path, env, tmp_path):
    # `nohup jaxembed train ... &` in a script starts it with SIGINT ignored: a Ctrl-C meant for the
    # shell must stop it neither during the imports nor in the loop, as with any Unix program.
    workdir = tmp_path / "run"
    args = train_args(workdir, text_path, "--config.train.steps=100000", "--config.train.log_every=10000")
    args += ["--config.train.eval_every=100000", "--config.train.checkpoint_every=100000"]
    proc = start(args, env, tmp_path, "run", ignore_sigint=True)
    try:
        time.sleep(1)
        os.kill(proc.pid, signal.SIGINT)
        wait_for(lambda: logged_steps(workdir) == [0], proc, "the step-0 row")
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(2)
        assert proc.poll() is None, proc.err_path.read_text()
        os.kill(proc.pid, signal.SIGTERM)
        code, _, err = finish(proc, timeout=120)
    finally:
        proc.kill()
    assert code == 128 + signal.SIGTERM, err
    assert "SIGINT" not in err and "stopped by SIGTERM" in err, err


# --- 6: a full disk ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path, finished):
    """A real tmpfs that holds the run's files and one checkpoint, but not two."""
    checkpoint_bytes = sum(p.stat().st_size for p in (finished / "checkpoints" / "20").rglob("*") if p.is_file())
    mount = tmp_path / "disk"
    mount.mkdir()
    size_kib = int(1.5 * checkpoint_bytes + 2**20) // 1024
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_is_one_line_and_the_last_good_checkpoint_resumes(finished, small_disk, text_path, env, tmp_path):
    workdir = small_disk / "run"
    proc = jaxembed(train_args(workdir, text_path), env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = assert_one_line(proc.stderr)
    assert line == (
        f"jaxembed train: error: could not write checkpoint step 10 in {workdir / 'checkpoints'} "
        "(no space left on device). The last good checkpoint is step 5; fix the problem (e.g. free disk space) "
        "and rerun the same command to resume from it."
    )
    assert step_dirs(workdir) == [5]
    assert "No space left on device" in (workdir / "train.log").read_text()  # orbax's details, kept in the file
    # More disk: the same command on a copy resumes from step 5 and ends where an uninterrupted run does.
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved)
    rerun = jaxembed(train_args(moved, text_path), env)
    assert rerun.returncode == 0, rerun.stderr
    assert "Resuming from step 5" in rerun.stdout
    assert_same_tables(moved, finished)
    assert logged_steps(moved) == [0, 5, 10, 15, 20]


RUN_FILES = ("checkpoints", "config.json", "corpus.json", "metrics.jsonl", "token_counts.npy", "train.log")


def test_disk_full_while_writing_the_report_names_the_file_and_keeps_the_run(finished, tmp_path, text_path, env):
    # The finished run without its report, on a real tmpfs with room for the run's own files and
    # a rewrite of them, but not for the report's token table (50,257 x 32 float32, 6.4 MB).
    run_bytes = sum(
        p.stat().st_size for name in RUN_FILES for p in [finished / name, *(finished / name).rglob("*")] if p.is_file()
    )
    mount = tmp_path / "disk"
    mount.mkdir()
    size_kib = (run_bytes + 3 * 2**20) // 1024
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)], check=True)
    try:
        workdir = mount / "run"
        workdir.mkdir()
        for name in RUN_FILES:
            src = finished / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, workdir / name)
        checkpoints = snapshot(workdir / "checkpoints")
        proc = jaxembed(train_args(workdir, text_path), env)
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = assert_one_line(proc.stderr)
        assert line.startswith(f"jaxembed train: error: could not write {workdir}/"), line
        assert "MiB free there). The run's checkpoints are complete (step 20)" in line, line
        assert "rerun the same command" in line and ".tmp" not in line
        assert snapshot(workdir / "checkpoints") == checkpoints
        moved = tmp_path / "moved"
        shutil.copytree(workdir, moved)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    # With room, the same command trains nothing and finishes the report.
    rerun = jaxembed(train_args(moved, text_path), env)
    assert rerun.returncode == 0, rerun.stderr
    assert (moved / "report.md").is_file()


# --- 7: a refused run leaves no workdir -------------------------------------------


@pytest.mark.parametrize(
    "flag, hint",
    [
        ("--config.data.batch_size=-4", "data.batch_size"),
        ("--config.data.batchsize=4", "Did you mean --config.data.batch_size?"),
        ("--config.data.batch_size=4096", "4096 x 8"),
    ],
    ids=["negative", "unknown-field", "batch-too-large"],
)
def test_bad_flag_leaves_no_workdir(text_path, env, tmp_path, flag, hint):
    workdir = tmp_path / "new" / "run"
    proc = jaxembed(train_args(workdir, text_path, flag), env)
    assert proc.returncode == 2
    assert hint in assert_one_line(proc.stderr)
    assert not (tmp_path / "new").exists()


# --- 12: a tokenizer that needs the network, offline ------------------------------


def test_offline_tokenizer_is_one_line(text_path, env, tmp_path):
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    proc = jaxembed(
        train_args(tmp_path / "run", text_path, "--config.data.tokenizer=cl100k_base"),
        {**env, "TIKTOKEN_CACHE_DIR": str(cache)},
        timeout=120,
    )
    assert proc.returncode == 2
    line = assert_one_line(proc.stderr)
    assert "tokenizer='cl100k_base'" in line and "could not be downloaded" in line and str(cache) in line, line
    assert "tokenizer='gpt2', which works offline" in line
    assert not (tmp_path / "run").exists() and list(cache.iterdir()) == []


# --- 13: readers skip a damaged checkpoint out loud -------------------------------


def test_readers_warn_when_they_skip_a_damaged_checkpoint(finished_copy, env, tmp_path):
    corrupt(finished_copy / "checkpoints" / "20")
    damaged = snapshot(finished_copy / "checkpoints")
    skipped = (
        f"warning: checkpoint step 20 in {finished_copy / 'checkpoints'} is unreadable "
        r"\(\w+\); reading an older one\."
    )

    proc = jaxembed(["neighbors", "--workdir", finished_copy, " the", "-k", "3"], env)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(skipped, proc.stderr.strip()), proc.stderr
    assert proc.stdout.startswith(f"Step 15 of {finished_copy}:")
    assert len(proc.stdout.splitlines()) == 2

    out = tmp_path / "proj"
    proc = jaxembed(["export", "--workdir", finished_copy, "--out", out, "--tokens", "10"], env)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(skipped, proc.stderr.strip()), proc.stderr
    step15 = run_lib.load_run(finished_copy)
    assert step15.step == 15
    np.testing.assert_array_equal(np.load(out / "token_embeddings.npy"), step15.token_VxD)
    assert snapshot(finished_copy / "checkpoints") == damaged  # readers rename nothing


def test_sigterm_during_start_up_exits_143(text_path, env, tmp_path):
    # 128 + the signal that stopped it, as the README says, also where SIGTERM becomes KeyboardInterrupt.
    proc = start(train_args(tmp_path / "run", text_path, "--config.train.steps=5000"), env, tmp_path, "run")
    try:
        time.sleep(1.0)  # importing jax: the signal becomes a KeyboardInterrupt there
        os.kill(proc.pid, signal.SIGTERM)
        code, _, err = finish(proc)
    finally:
        proc.kill()
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("jaxembed train: "), err[-3000:]


@pytest.mark.parametrize("delay", [1.0, 3.0, 5.0, 7.0])
def test_ctrl_c_during_start_up_is_one_line_exit_130_and_no_debris(text_path, env, tmp_path, delay):
    # Wherever it lands (imports, data, compiling, the first evaluation, the first steps): one line
    # after the notice, exit 130, no traceback or crash, and no workdir unless a checkpoint was saved.
    workdir = tmp_path / "run"
    proc = start(train_args(workdir, text_path, "--config.train.steps=5000"), env, tmp_path, "run")
    try:
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGINT)
        code, _, err = finish(proc)
    finally:
        proc.kill()
    assert code == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2 and lines[-1].startswith("jaxembed train: "), err[-3000:]
    assert all(line.startswith("warning: SIGINT received") for line in lines[:-1]), err
    for word in (*NOISE, "Fatal Python error", "error:"):
        assert word not in err, err
    if not (workdir / "checkpoints").is_dir() or not step_dirs(workdir):
        assert not workdir.exists(), sorted(p.name for p in workdir.iterdir())
