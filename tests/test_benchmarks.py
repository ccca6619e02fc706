"""The benchmark script (benchmarks/run.py) in its smoke size, so it never rots.

torch is not a dev dependency: without it the smoke run measures jaxembed
alone and says so, and these tests check the jaxembed figures and the
hardware floors; with torch installed (``pip install -e ".[bench]"``) they
check the reference's columns too, and that the reference computes what
jaxembed computes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), out, proc.stdout


def test_hardware_probes_are_sane(quick):
    results, _, _ = quick
    hw = results["hardware"]
    assert _positive(hw["bandwidth_Bps"]) and _positive(hw["matmul_flops"]["peak"])
    assert 1e8 < hw["bandwidth_Bps"] < 1e13  # between 0.1 GB/s and 10 TB/s
    assert 1e8 < hw["matmul_flops"]["peak"] < 1e16


@pytest.mark.parametrize("kind", ["data", "embed", "train"])
def test_jaxembed_measurements_and_floors(quick, kind):
    results, _, _ = quick
    rows = results[kind]
    assert rows
    for row in rows:
        assert len(row["times_s"]["jaxembed"]) == results["settings"]["reps"]
        assert all(_positive(t) for t in row["times_s"]["jaxembed"])
        assert _positive(row["jaxembed_s"]) and _positive(row["jaxembed_tokens_per_s"])
        assert _positive(row["floor_s"]) and _positive(row["jaxembed_x_floor"])
    if kind == "data":
        assert all(row["batches"] > 0 for row in rows)
    if kind == "train":
        assert all(_positive(row["floor_terms"]["flops"]) and _positive(row["floor_terms"]["bytes"]) for row in rows)


def test_reference_columns_match_torch_availability(quick):
    results, _, stdout = quick
    for kind in ("data", "embed", "train"):
        for row in results[kind]:
            if HAS_TORCH:
                assert _positive(row["reference_s"]) and _positive(row["speedup_vs_reference"])
            else:
                assert "reference_s" not in row
    if not HAS_TORCH:
        assert "torch is not installed" in stdout
    assert results["settings"]["reference"] == HAS_TORCH


def test_sweep_memory_and_report_files(quick):
    results, out, _ = quick
    sweep = results["sweep"]
    assert len(sweep["rows"]) >= 2 and all(_positive(r["jaxembed_s"]) for r in sweep["rows"])
    assert all(abs(sum(r["shares"].values()) - 1) < 1e-6 for r in sweep["rows"])
    assert all("error" not in m and _positive(m["peak_MiB"]) for m in results["memory"])
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    for heading in ("Data pipeline", "InputEmbedding forward", "Train step", "Memory", "How cost grows"):
        assert heading in table


# --- The reference pieces themselves ---------------------------------------------------


@pytest.mark.parametrize("max_length, stride", [(4, 4), (5, 2), (3, 7), (1, 1)])
def test_reference_windows_equal_jaxembed_windows(max_length, stride):
    from benchmarks.torch_reference import reference_windows
    from jaxembed.data import StridedWindows

    ids = np.random.default_rng(0).integers(0, 50257, 101).astype(np.int32)
    want = reference_windows(ids.tolist(), max_length, stride)
    windows = StridedWindows(ids, max_length, stride)
    got = [(x.tolist(), y.tolist()) for x, y in (windows[i] for i in range(len(windows)))]
    assert got == want


@pytest.mark.parametrize("chunk_tokens", [None, 100])  # 100: chunks of 2 batches, so boundaries are crossed
@pytest.mark.parametrize("shard_count", [1, 2])
def test_fast_loader_prototype_yields_grain_loaders_batches(shard_count, chunk_tokens, monkeypatch):
    from benchmarks.prototypes import fast_dataloader
    from jaxembed import data

    if chunk_tokens:
        monkeypatch.setattr(data, "CHUNK_TOKENS", chunk_tokens)

    ids = np.random.default_rng(1).integers(0, 50257, 700).astype(np.int32)
    for shard_index in range(shard_count):
        kwargs = dict(
            batch_size=6,
            max_length=5,
            stride=3,
            shuffle=True,
            seed=2,
            drop_last=False,
            num_epochs=2,
            shard_index=shard_index,
            shard_count=shard_count,
        )
        want = list(data.create_dataloader(ids, **kwargs))
        fast = fast_dataloader(ids, kwargs.pop("batch_size"), kwargs.pop("max_length"), kwargs.pop("stride"), **kwargs)
        got = list(fast)
        assert len(got) == len(want)
        for (x, y), (u, v) in zip(got, want):
            np.testing.assert_array_equal(x, u)
            np.testing.assert_array_equal(y, v)
        # Its iterator state is the Grain loader's: each restores the other's.
        grain_loader = data.create_dataloader(ids, **{**kwargs, "batch_size": 6, "max_length": 5, "stride": 3})
        for taken in (0, 1, 7, len(want) - 1):
            it, git = iter(fast), iter(grain_loader)
            for _ in range(taken):
                next(it), next(git)
            assert it.get_state() == git.get_state()
            from_fast, from_grain = iter(grain_loader), iter(fast)
            from_fast.set_state(it.get_state())
            from_grain.set_state(git.get_state())
            np.testing.assert_array_equal(next(from_fast)[0], want[taken][0])
            np.testing.assert_array_equal(next(from_grain)[0], want[taken][0])
