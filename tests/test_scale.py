"""The same training on any mesh: simulated devices, two real processes, bf16.

Device counts are fixed when JAX starts, so each scenario runs in a fresh
subprocess with ``--xla_force_host_platform_device_count``; the rest of the
suite keeps its single CPU device.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import portpicker
import pytest

from jaxembed import train
from jaxembed.train import run as run_lib
from jaxembed.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
# Small and fast: 16-wide tables, context 8, 8 steps. Adam divides by sqrt(v), so near-zero
# gradients amplify reduction-order rounding: tables agree to 1e-5 (lr is 2e-2), not bitwise.
SMALL = [
    "--config.train.steps=8",
    "--config.train.log_every=2",
    "--config.train.eval_every=4",
    "--config.train.checkpoint_every=4",
    "--config.model.features=16",
    "--config.data.max_length=8",
    "--config.data.stride=8",
    "--config.data.batch_size=16",
]


def env_with_devices(count: int, tmp_path) -> dict:
    env = dict(os.environ, JAXEMBED_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    return env


@pytest.fixture(scope="module")
def small_text(corpus_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "rj.txt"
    path.write_text(corpus_path.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path


def free_port() -> int:
    # portpicker checks TCP and UDP and avoids ports handed out recently, unlike a bare bind to 0.
    return portpicker.pick_unused_port()


def losses(workdir: pathlib.Path) -> list[tuple]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in rows]


def assert_same_losses(a, b, rtol=1e-5):
    assert [r[0] for r in a] == [r[0] for r in b]
    for row_a, row_b in zip(a, b):
        for x, y in zip(row_a[1:], row_b[1:]):
            assert (x is None) == (y is None)
            if x is not None:
                assert x == pytest.approx(y, rel=rtol)


MESH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from jaxembed import train
    from jaxembed.cli import load_config
    from jaxembed.nn.model import embedding_tables

    config = load_config(sys.argv[1], sys.argv[4:])
    text = open(sys.argv[2], encoding="utf-8").read()
    out = {}
    for data_axis, model_axis in [(1, 1), (8, 1), (4, 2)]:
        config.mesh.data, config.mesh.model = data_axis, model_axis
        result = train.train_and_evaluate(config, None, text=text, progress=False)
        token = result.state.params["params"]["embed"]["token"]["embedding"]
        tok_VxD, pos_LxD = embedding_tables(result.state.params, result.splits.vocab_size)
        name = f"{data_axis}x{model_axis}"
        np.save(f"{sys.argv[3]}/{name}-token.npy", tok_VxD)
        np.save(f"{sys.argv[3]}/{name}-position.npy", pos_LxD)
        out[name] = {
            "metrics": result.metrics,
            "token_shard_shape": list(token.addressable_shards[0].data.shape),
            "devices": len(token.sharding.device_set),
        }
    print(json.dumps(out))
    """
)


def test_meshes_match_one_device(small_text, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT, str(REPO / "configs/tiny.py"), str(small_text), str(tmp_path), *SMALL],
        env=env_with_devices(8, tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    vocab_rows = 50304  # GPT-2's 50,257 padded to a multiple of 128
    assert runs["1x1"]["token_shard_shape"] == [vocab_rows, 16] and runs["1x1"]["devices"] == 1
    assert runs["8x1"]["token_shard_shape"] == [vocab_rows, 16] and runs["8x1"]["devices"] == 8
    assert runs["4x2"]["token_shard_shape"] == [vocab_rows // 2, 16]  # split along the vocabulary
    one = [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in runs["1x1"]["metrics"]]
    for name in ("8x1", "4x2"):
        assert_same_losses([(r["step"], r.get("train_loss"), r.get("val_loss")) for r in runs[name]["metrics"]], one)
        for table in ("token", "position"):
            np.testing.assert_allclose(
                np.load(tmp_path / f"{name}-{table}.npy"), np.load(tmp_path / f"1x1-{table}.npy"), rtol=1e-5, atol=1e-5
            )


def run_cli(workdir, text, env, *extra, **popen):
    cmd = [
        sys.executable,
        "-m",
        "jaxembed.cli",
        "train",
        "--config",
        str(REPO / "configs/tiny.py"),
        "--workdir",
        str(workdir),
        "--text",
        str(text),
        "--no-progress",
        *SMALL,
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def start_two_processes(workdir, text, tmp_path, *extra):
    port = free_port()
    return [
        run_cli(
            workdir,
            text,
            env_with_devices(2, tmp_path),
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(i),
            *extra,
        )
        for i in range(2)
    ]


def test_two_processes_match_one_process_with_four_devices(small_text, tmp_path):
    procs = start_two_processes(tmp_path / "multi", small_text, tmp_path)
    single = run_cli(tmp_path / "single", small_text, env_with_devices(4, tmp_path))
    for proc in [*procs, single]:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert_same_losses(losses(tmp_path / "multi"), losses(tmp_path / "single"))
    multi_run, single_run = run_lib.load_run(tmp_path / "multi"), run_lib.load_run(tmp_path / "single")
    assert multi_run.step == single_run.step == 8
    np.testing.assert_allclose(multi_run.token_VxD, single_run.token_VxD, rtol=1e-5, atol=1e-5)
    # Each process wrote its own Grain iterator state into the checkpoint.
    data_files = sorted(p.name for p in (tmp_path / "multi/checkpoints/8/data").glob("process_*"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]

    # Resumed by one process: refused in one line, every checkpoint and the metrics left as they were
    # (the failed restore used to set all of them aside, and the next run started from step 0).
    before = {
        p: p.read_bytes()
        for p in (tmp_path / "multi").rglob("*")
        if p.is_file() and p.name not in ("train.log", ".lock")
    }
    resumed = run_cli(tmp_path / "multi", small_text, env_with_devices(4, tmp_path), "--config.train.steps=12")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 2, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"jaxembed train: error: checkpoint step 8 in {tmp_path / 'multi' / 'checkpoints'} was written by 2 processes "
        "(each saved its own place in the data) and this run has 1: resume with 2 processes, or start a new run "
        "with another --workdir. Nothing was changed."
    )
    after = {
        p: p.read_bytes()
        for p in (tmp_path / "multi").rglob("*")
        if p.is_file() and p.name not in ("train.log", ".lock")
    }
    assert after == before


def test_a_dead_process_stops_the_other(small_text, tmp_path):
    procs = start_two_processes(
        tmp_path / "w", small_text, tmp_path, "--config.train.steps=100000", "--heartbeat-timeout", "5"
    )
    metrics = tmp_path / "w" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    try:
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline and procs[0].poll() is None, "training never started"
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode != 0
    assert time.monotonic() - killed < 60
    assert "another task died" in err or "unhealthy" in err
    procs[1].communicate()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_one_process_stops_both_at_one_step_with_a_checkpoint(small_text, tmp_path, signum):
    # Preemption reaches one host; every process must stop at the same step, save it and exit within
    # a step and a save (rows and saves here are 10,000 steps apart), as with one process.
    far = ["--config.train.steps=100000", "--config.train.log_every=10000", "--config.train.eval_every=100000"]
    procs = start_two_processes(tmp_path / "w", small_text, tmp_path, *far, "--config.train.checkpoint_every=100000")
    metrics = tmp_path / "w" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    try:
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "training never started"
            time.sleep(0.5)
        time.sleep(2)  # inside the loop
        procs[1].send_signal(signum)
        sent = time.monotonic()
        errs = [p.communicate(timeout=120)[1] for p in procs]
        elapsed = time.monotonic() - sent
    finally:
        for p in procs:
            p.kill()
    # The other process hears of it as JAX's preemption notice, a SIGTERM.
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM, 128 + signum], errs
    steps = {int(re.search(r"after step (\d+)", err).group(1)) for err in errs}
    (step,) = steps
    assert sorted(int(d.name) for d in (tmp_path / "w/checkpoints").iterdir() if d.name.isdigit()) == [step]
    data_files = sorted(p.name for p in (tmp_path / f"w/checkpoints/{step}/data").glob("process_*"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]
    assert elapsed < 30, f"{elapsed:.1f} s from the signal to both exits"


def test_bfloat16_compute_learns_with_float32_params(small_text, tmp_path):
    from jaxembed.cli import load_config

    config = load_config(
        str(REPO / "configs/tiny.py"),
        [
            "--config.model.dtype=bfloat16",
            "--config.train.steps=60",
            "--config.train.eval_every=60",
        ],
    )
    result = train.train_and_evaluate(config, None, text=small_text.read_text(encoding="utf-8"), progress=False)
    val = [r["val_loss"] for r in result.metrics if "val_loss" in r]
    assert val[0] - val[-1] > 1.0, val
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(result.state.params))
    logits = result.model.apply(result.state.params, np.zeros((1, 16), np.int32))
    assert logits.dtype == jax.numpy.bfloat16


def test_make_mesh_sizes_and_errors():
    devices = jax.devices() * 4  # mesh arithmetic only; never placed on
    assert trainer.make_mesh(-1, 2, devices).shape == {"data": 2, "model": 2}
    assert trainer.make_mesh(2, -1, devices).shape == {"data": 2, "model": 2}
    assert trainer.make_mesh(1, 1, devices).shape == {"data": 1, "model": 1}
    with pytest.raises(ValueError, match="mesh.model=0"):
        trainer.make_mesh(1, 0, devices)
    with pytest.raises(ValueError, match=r"^mesh.data=4 x mesh.model=2 needs 8 devices, but 4 are available\.$"):
        trainer.make_mesh(4, 2, devices)
    with pytest.raises(ValueError, match=r"needs 2 devices, but 1 is available\.$"):
        trainer.make_mesh(1, 2, devices[:1])
    with pytest.raises(ValueError, match="only one"):
        trainer.make_mesh(-1, -1, devices)
    # The field whose size does not divide the devices is named (the other one, -1, takes the rest).
    with pytest.raises(ValueError, match=r"^mesh.model=3 does not divide the 4 available device\(s\)"):
        trainer.make_mesh(-1, 3, devices)
    with pytest.raises(ValueError, match=r"^mesh.data=3 does not divide the 4 available device\(s\)"):
        trainer.make_mesh(3, -1, devices)
    # A config passed where its mesh sizes go: the field and the type, not a comparison deep inside.
    from jaxembed.config import named_config

    with pytest.raises(TypeError, match=r"^mesh.data must be an int .*got ConfigDict\.$"):
        trainer.make_mesh(named_config("tiny"))
    with pytest.raises(TypeError, match=r"mesh.model must be an int .*got float"):
        trainer.make_mesh(1, 2.0, devices)


def test_batch_must_split_over_the_data_axis(small_text, tmp_path):
    proc = run_cli(tmp_path / "w", small_text, env_with_devices(4, tmp_path), "--config.data.batch_size=6")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "data.batch_size=6 must be divisible by the mesh's data axis (4 devices)" in err
