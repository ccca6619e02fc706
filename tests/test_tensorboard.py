"""jaxembed.train.tensorboard, read back with TensorBoard's own readers.

Scalars, text and images through ``EventAccumulator`` (the Python loader of
``tensorboard --load_fast=false``); resume also through the Rust data server
that plain ``tensorboard --logdir`` uses; projector files through the
projector plugin's own HTTP handlers; profiler traces by their files.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.util import tensor_util

from jaxembed.train.tensorboard import SummaryLog, parse_profile_steps, profile, write_projector

ROOT = pathlib.Path(__file__).resolve().parents[1]

ROWS = [
    {"step": 0, "learning_rate": 0.0, "val_loss": 10.83},
    {"step": 10, "train_loss": 9.5, "grad_norm": 0.81, "learning_rate": 0.01, "tokens_per_sec": 1600.5},
    {
        "step": 20,
        "train_loss": 7.25,
        "grad_norm": 0.5,
        "learning_rate": 0.02,
        "tokens_per_sec": 1700.0,
        "val_loss": 7.4,
    },
]


def load(logdir) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def png(path, width_px, height_px) -> bytes:
    fig = Figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    fig.add_subplot().plot([0, 1], [1, 0])
    FigureCanvasAgg(fig).print_png(str(path))
    return pathlib.Path(path).read_bytes()


def test_rows_config_and_images_read_back(tmp_path):
    loss_png = png(tmp_path / "loss.png", 320, 200)
    pca_png = png(tmp_path / "pca.png", 240, 240)
    config_json = '{\n  "seed": 0,\n  "train": {"steps": 20}\n}'
    logdir = tmp_path / "run"
    with SummaryLog(logdir) as tb:
        tb.write_config(config_json)
        for row in ROWS:
            tb.write_row(dict(row))
        tb.write_images(20, {"report/loss": tmp_path / "loss.png", "report/pca": tmp_path / "pca.png"})
    acc = load(logdir)

    # The rows as written, tag by tag, rounded to float32 (TensorBoard stores simple_value as float32).
    expected = {
        "learning_rate": [(0, 0.0), (10, 0.01), (20, 0.02)],
        "val_loss": [(0, 10.83), (20, 7.4)],
        "train_loss": [(10, 9.5), (20, 7.25)],
        "grad_norm": [(10, 0.81), (20, 0.5)],
        "tokens_per_sec": [(10, 1600.5), (20, 1700.0)],
    }
    assert sorted(acc.Tags()["scalars"]) == sorted(expected)
    for tag, points in expected.items():
        assert scalars(acc, tag) == [(s, float(np.float32(v))) for s, v in points], tag

    (text_event,) = acc.Tensors("config")
    assert text_event.step == 0
    text = tensor_util.make_ndarray(text_event.tensor_proto).item().decode()
    assert text == f"```json\n{config_json}\n```"

    for tag, data, (width, height) in [("report/loss", loss_png, (320, 200)), ("report/pca", pca_png, (240, 240))]:
        (image,) = acc.Images(tag)
        assert (image.step, image.width, image.height) == (20, width, height)
        assert image.encoded_image_string == data


def test_the_writer_does_not_import_torch(tmp_path):
    """With PyTorch installed, tensorboardX's writer would import it (seconds of every run's start-up).

    A stand-in ``torch`` package on the path records whether anything imports it: writing a run's
    events must not, and a user's own ``import torch`` afterwards must still work.
    """
    (tmp_path / "torch").mkdir()
    marker = tmp_path / "imported"
    (tmp_path / "torch" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'a').write('x')\n__version__ = 'stand-in'\n"
    )
    script = textwrap.dedent(
        f"""
        import sys
        from jaxembed.train.tensorboard import SummaryLog
        with SummaryLog({str(tmp_path / "run")!r}) as tb:
            tb.write_row({{"step": 1, "train_loss": 2.0}})
        assert "torch" not in sys.modules
        import torch
        print(torch.__version__)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "stand-in"  # the user's import: the stand-in, imported once, by the user
    assert marker.read_text() == "x"
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_write_images_rejects_a_file_that_is_not_png(tmp_path):
    (tmp_path / "plot.png").write_bytes(b"GIF89a" + bytes(30))
    with SummaryLog(tmp_path / "run") as tb, pytest.raises(ValueError, match=r"images\['loss'\]=.*plot.png.*not a PNG"):
        tb.write_images(5, {"loss": tmp_path / "plot.png"})


def test_bad_steps_are_rejected_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"resume_step=-1 must be an integer >= 0"):
        SummaryLog(tmp_path, resume_step=-1)
    with SummaryLog(tmp_path) as tb, pytest.raises(ValueError, match=r"row\['step'\]=None must be an integer step"):
        tb.write_row({"train_loss": 1.0})


def _rust_scalars(root: pathlib.Path) -> dict:
    """Scalars as plain ``tensorboard --logdir root`` serves them (the Rust data server), in a child process."""
    code = textwrap.dedent(f"""
        from tensorboard import context
        from tensorboard.data import server_ingester
        from tensorboard.util import grpc_util
        ingester = server_ingester.SubprocessServerDataIngester(
            server_ingester.get_server_binary(), {str(root)!r}, reload_interval=0,
            channel_creds_type=grpc_util.ChannelCredsType.LOCAL)
        ingester.start()
        runs = ingester.data_provider.read_scalars(
            context.RequestContext(), experiment_id="", plugin_name="scalars", downsample=10000)
        print({{run: {{tag: [(p.step, p.value) for p in points] for tag, points in tags.items()}}
                for run, tags in runs.items()}})
    """)
    # The server exits when its parent's stdin handle closes, i.e. with the child process.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return eval(out.stdout.strip().splitlines()[-1])  # a dict literal of ints and floats


def test_resume_after_a_killed_run_shows_each_step_once(tmp_path):
    logdir = tmp_path / "run"
    with SummaryLog(logdir) as tb:
        for step in range(0, 51, 10):
            tb.write_row({"step": step, "train_loss": 100.0 + step})
    # A run resumed from the step-50 checkpoint writes 60 and 70, then dies without closing its writer.
    # tensorboardX writes from a thread: the child waits until both rows are on disk, as a longer run's would be.
    killed = textwrap.dedent(f"""
        import os, pathlib, signal, time
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
        from jaxembed.train.tensorboard import SummaryLog
        tb = SummaryLog({str(logdir)!r}, resume_step=50)
        for step in (60, 70):
            tb.write_row({{"step": step, "train_loss": 200.0 + step}})
        newest = max(pathlib.Path({str(logdir)!r}).glob("events.out.tfevents.*"))
        for _ in range(200):
            tb.flush()
            if sum(bool(e.summary.value) for e in LegacyEventFileLoader(str(newest)).Load()) == 2:
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    before = set(logdir.iterdir())
    proc = subprocess.run(
        [sys.executable, "-c", killed],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL
    (killed_file,) = set(logdir.iterdir()) - before
    written = [
        (e.step, e.summary.value[0].simple_value)
        for e in LegacyEventFileLoader(str(killed_file)).Load()
        if e.summary.value
    ]
    assert written == [(60, 260.0), (70, 270.0)]
    with SummaryLog(logdir, resume_step=50) as tb:  # resumed again from the same checkpoint
        for step in range(60, 101, 10):
            tb.write_row({"step": step, "train_loss": 300.0 + step})

    expected = [(s, 100.0 + s) for s in range(0, 51, 10)] + [(s, 300.0 + s) for s in range(60, 101, 10)]
    assert scalars(load(logdir), "train_loss") == expected
    assert _rust_scalars(tmp_path) == {"run": {"train_loss": expected}}

    # A fresh start (resume_step=0) in the same folder shows only the new run.
    with SummaryLog(logdir) as tb:
        tb.write_row({"step": 0, "val_loss": 9.0})
        tb.write_row({"step": 10, "train_loss": 8.0})
    acc = load(logdir)
    assert scalars(acc, "train_loss") == [(10, 8.0)]
    assert scalars(acc, "val_loss") == [(0, 9.0)]


def test_projector_files_are_served_by_the_projector_plugin(tmp_path):
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin
    from werkzeug.test import Client

    rng = np.random.default_rng(0)
    table_VxD = rng.normal(size=(50, 3)).astype(np.float32) * 1e3
    ids = [7, 0, 42, 3]
    labels = ["' the'", "'\\n'", "tab\there", "' Romeo'"]
    logdir = tmp_path / "tiny"
    with SummaryLog(logdir) as tb:  # the projector lists only folders that are runs
        tb.write_row({"step": 0, "val_loss": 1.0})
    paths = write_projector(logdir, table_VxD, ids, labels)
    write_projector(logdir, table_VxD[:, :2], [1, 2], ["a", "b"], tag="other")  # a second entry is kept beside
    assert all(p.exists() for p in paths.values())

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    context = base_plugin.TBContext(
        logdir=str(tmp_path), data_provider=data_provider.MultiplexerDataProvider(mux, str(tmp_path))
    )
    apps = ProjectorPlugin(context).get_plugin_apps()

    def get(route, query):
        response = Client(apps[route]).get(f"{route}?{query}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_data()

    info = json.loads(get("/info", "run=tiny"))
    shapes = {e["tensorName"]: e["tensorShape"] for e in info["embeddings"]}
    assert shapes == {"token_embeddings": [4, 3], "other": [2, 2]}
    served = np.frombuffer(get("/tensor", "run=tiny&name=token_embeddings"), np.float32).reshape(4, 3)
    np.testing.assert_array_equal(served, table_VxD[ids])
    # The same numbers parsed as plain TSV with numpy.
    np.testing.assert_array_equal(np.loadtxt(paths["tensor"], delimiter="\t", dtype=np.float32), table_VxD[ids])
    metadata = get("/metadata", "run=tiny&name=token_embeddings").decode().splitlines()
    assert metadata == ["label\tid", "' the'\t7", "'\\n'\t0", "tab\\there\t42", "' Romeo'\t3"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"table_VxD": np.ones(4)}, "table_VxD must be a numeric"),
        ({"token_ids": [0, 9]}, r"token_ids contains 9; ids must lie in \[0, 5\)"),
        ({"labels": ["a"]}, "labels has 1 entries but token_ids has 2"),
        ({"tag": "a b"}, "tag='a b' is not allowed"),
    ],
)
def test_write_projector_rejects_bad_input(tmp_path, kwargs, match):
    args = {"table_VxD": np.ones((5, 2)), "token_ids": [0, 1], "labels": ["a", "b"]} | kwargs
    with pytest.raises(ValueError, match=match):
        write_projector(tmp_path, **args)


def test_parse_profile_steps():
    assert parse_profile_steps("10,15") == (10, 15)
    assert parse_profile_steps(" 3 , 4 ") == (3, 4)
    assert parse_profile_steps([1, 2]) == (1, 2)
    for off in (None, "", ()):
        assert parse_profile_steps(off) is None
    for bad in ("10", "10,15,20", "a,b", "5,5", "0,3", (True, 3), (1.5, 3), 7):
        with pytest.raises(ValueError, match=r"train.profile_steps=.* is not allowed: use 'START,STOP'"):
            parse_profile_steps(bad)
    with pytest.raises(ValueError, match=r"starts after the last step \(train.steps=100\)"):
        parse_profile_steps("200,210", total_steps=100)
    with pytest.raises(ValueError, match="needs a workdir"):
        profile(None, "1,2")


def test_profiler_traces_the_configured_steps(tmp_path):
    f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
    x = jnp.ones((32, 32))
    prof = profile(tmp_path, "2,4")
    out = f(x)
    try:
        for step in range(1, 6):
            with prof.step(step, wait_for=out):
                out = f(x + step)
            if step == 3:
                assert not list(tmp_path.glob("plugins/profile/*/*")), "the trace is written when it stops"
    finally:
        prof.close()
    traces = list(tmp_path.glob("plugins/profile/*/*.xplane.pb")) + list(
        tmp_path.glob("plugins/profile/*/*.trace.json.gz")
    )
    assert traces and all(t.stat().st_size > 0 for t in traces)
    assert len({t.parent for t in traces}) == 1  # one trace session, not one per step
    off = profile(tmp_path / "off", "")
    with off.step(1):
        f(x)
    off.close()
    assert not (tmp_path / "off").exists()
