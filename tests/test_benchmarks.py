"""The benchmarks (benchmarks/) at their smoke size, so they never rot.

torch is not a dev dependency: without it the smoke run measures jaxembed
alone and says so, and these tests check the jaxembed figures, the floors,
the memory plan and the mesh run against sizes worked out here; with torch
installed (``pip install -e ".[bench]"``) they check the reference's columns
too.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxembed.nn.losses import auto_tile_tokens

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HAS_TORCH = importlib.util.find_spec("torch") is not None
# The smoke run's sizes (benchmarks/run.py --quick), restated so the tests check them independently.
QUICK_TOKENS = 5000
QUICK_DATA = [(4, 4, 8), (64, 1, 16)]  # (max_length, stride, batch)
B, L, D, V = 8, 4, 256, 4096  # the quick train step; 4,096 is already a multiple of vocab_multiple=128


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
    assert 1e8 < hw["bandwidth_Bps"] < 1e13  # between 0.1 GB/s and 10 TB/s
    assert 1e8 < hw["matmul_flops"]["peak"] < 1e16
    assert hw["matmul_flops"]["peak"] == max(hw["matmul_flops"]["numpy"], hw["matmul_flops"]["xla"])


def test_data_rows_count_the_seeds_windows(quick):
    results, _, _ = quick
    rows = results["data"]
    assert [(r["max_length"], r["stride"], r["batch"]) for r in rows] == QUICK_DATA
    hw = results["hardware"]
    for r in rows:
        # The seed's rule: a window starts at every stride below len(ids) - max_length.
        windows = len(range(0, QUICK_TOKENS - r["max_length"], r["stride"]))
        assert r["windows"] == windows and r["batches"] == windows // r["batch"]
        assert r["tokens_per_unit"] == r["batches"] * r["batch"] * r["max_length"]
        assert len(r["times_s"]["jaxembed"]) == results["settings"]["reps"]
        assert r["jaxembed_s"] == pytest.approx(float(np.median(r["times_s"]["jaxembed"])))
        assert r["jaxembed_tokens_per_s"] == pytest.approx(r["tokens_per_unit"] / r["jaxembed_s"])
        floor_bytes = r["batches"] * r["batch"] * (3 * r["max_length"] + 1) * 4
        assert r["floor_s"] == pytest.approx(floor_bytes / hw["bandwidth_Bps"])


def test_train_row_floor_is_the_tied_models_work(quick):
    results, _, _ = quick
    (row,) = results["train"]
    assert (row["batch"], row["length"], row["features"], row["vocab"]) == (B, L, D, V)
    flops = 3 * 2 * B * L * D * V  # logits, d(h), d(table): three [B*L, D] x [D, V] matmuls
    adamw_bytes = 7 * (V + L) * D * 4  # read param, grad, mu, nu; write param, mu, nu (float32)
    assert row["floor_terms"]["flops"] == flops and row["floor_terms"]["bytes"] == adamw_bytes
    hw = results["hardware"]
    want = flops / hw["matmul_flops"]["peak"] + adamw_bytes / hw["bandwidth_Bps"]
    assert row["floor_s"] == pytest.approx(want)
    assert row["jaxembed_x_floor"] == pytest.approx(row["jaxembed_s"] / want)
    assert all(_positive(t) for t in row["times_s"]["jaxembed"])
    # CPU per step, split user / kernel: some user time, and no more CPU than the cores could give.
    user, kernel = row["jaxembed_user_s"], row["jaxembed_sys_s"]
    assert user > 0 and kernel >= 0
    assert user + kernel <= 2 * os.cpu_count() * max(row["times_s"]["jaxembed"])


def test_reference_columns_match_torch_availability(quick):
    results, _, stdout = quick
    for kind in ("data", "embed", "train"):
        for row in results[kind]:
            if HAS_TORCH:
                assert _positive(row["reference_s"])
                assert row["speedup_vs_reference"] == pytest.approx(row["reference_s"] / row["jaxembed_s"])
            else:
                assert "reference_s" not in row
    assert results["settings"]["reference"] == HAS_TORCH
    if not HAS_TORCH:
        assert "torch is not installed" in stdout


def test_memory_plan_holds_the_state_and_the_dense_gradient(quick):
    results, _, _ = quick
    xla = {r["variant"]: r for r in results["memory"]["xla"]}
    assert set(xla) == {"dense", "default tile 2048", "tile 256", "tile 8"}
    tiles = {name: r["tiles"] for name, r in xla.items()}
    # B*L = 32 tokens: only the 8-token tile splits the batch (into 4); a tile of 0 or >= 32 is dense.
    assert tiles == {"dense": 1, "default tile 2048": 1, "tile 256": 1, "tile 8": math.ceil(B * L / 8)}
    dense = xla["dense"]
    for name in ("default tile 2048", "tile 256"):  # a tile holding the whole batch compiles the dense program
        assert xla[name]["temp_bytes"] == dense["temp_bytes"]
    params = (V + L) * D * 4  # token + position tables, float32
    batch_bytes = 2 * B * L * 4  # inputs and targets, int32
    # Arguments: params, Adam's mu and nu, the batch, and a few scalars (step, counts, key).
    assert 3 * params + batch_bytes <= dense["argument_bytes"] <= 3 * params + batch_bytes + 64
    # The donated state is reused for the new state: everything but the batch is aliased.
    assert dense["alias_bytes"] == dense["argument_bytes"] - batch_bytes
    # Clipping needs the gradient's global norm before any update: the dense gradient is a temporary.
    for r in xla.values():
        assert r["temp_bytes"] >= params
    assert dense["live_bytes"] == (
        dense["argument_bytes"] + dense["temp_bytes"] + dense["output_bytes"] - dense["alias_bytes"]
    )
    # jaxembed plan of the same (default) config reads the same compiled step.
    plan = results["memory"]["plan"]
    default = xla["default tile 2048"]
    assert plan["temp_bytes"] == default["temp_bytes"] and plan["argument_bytes"] == default["argument_bytes"]
    assert plan["peak_bytes"] == default["live_bytes"]
    assert plan["tokens_per_step"] == B * L and plan["loss_tile_tokens"] == 2048
    # Children only for programs that differ: the dense step and the one that really tiles.
    rss = {r["variant"]: r for r in results["memory"]["rss"] if r["impl"] == "jaxembed"}
    assert set(rss) == {"dense", "tile 8"}
    for r in rss.values():
        assert "error" not in r, r.get("error")
        assert r["resident_MiB"] >= params / 2**20  # the initialised tables are in memory
        assert r["peak_MiB"] >= r["resident_MiB"] - 1  # stepping keeps the state resident


def test_tiled_and_dense_steps_agree_and_are_timed_side_by_side(quick):
    results, _, _ = quick
    (row,) = results["train"]
    impls = ("jaxembed", "jaxembed_dense", "jaxembed_tiled")
    cpu_default = auto_tile_tokens(V, "cpu", features=D)  # the default on CPU
    assert row["loss_tile_tokens"] == {"jaxembed": cpu_default, "jaxembed_dense": 0, "jaxembed_tiled": B * L // 4}
    losses = [row["first_loss"][name] for name in impls]
    # The first step from the same initial state and batch: the same loss whatever the tiling ...
    assert max(losses) - min(losses) <= 1e-4
    # ... and, with tables drawn at stddev 0.02, logits near 0: the loss of a uniform guess, ln V.
    assert abs(losses[0] - math.log(V)) < 0.05
    for name in impls:
        assert len(row["times_s"][name]) == results["settings"]["reps"]
        assert row[f"{name}_s"] == pytest.approx(float(np.median(row["times_s"][name])))
        assert row[f"{name}_x_floor"] == pytest.approx(row[f"{name}_s"] / row["floor_s"])
    assert row["tiled_over_dense"] == pytest.approx(row["jaxembed_tiled_s"] / row["jaxembed_dense_s"])
    assert row["default_over_dense"] == pytest.approx(row["jaxembed_s"] / row["jaxembed_dense_s"])


@pytest.fixture(scope="module")
def corpus_section(quick):
    return quick[0]["corpus"]


def test_corpus_token_file_holds_an_independent_count_of_the_synthetic_corpus(corpus_section, tmp_path):
    from benchmarks.corpus import build_corpus
    from jaxembed.text.tokenizer import get_encoding

    enc = get_encoding("gpt2")
    sizes = corpus_section["sizes"]
    assert [s["target_MB"] for s in sizes] == [1, 2]
    assert not pathlib.Path(corpus_section["tmp_dir"]).exists()  # the corpora were deleted
    for size in sizes:
        # Rebuild the same corpus (deterministic in its seed) and count its tokens with tiktoken directly.
        root = tmp_path / str(size["target_MB"])
        built = build_corpus(root, int(size["target_MB"] * 1e6), int(corpus_section["file_MB"] * 1e6))
        assert (built["sha256"], built["bytes"]) == (size["sha256"], size["bytes"])
        files = sorted(root.glob("*.txt"))
        assert len(files) == size["files"] > 1
        texts = [f.read_text(encoding="utf-8") for f in files]
        assert len(set(texts)) == len(texts) and texts[0][:2000] != texts[1][:2000]  # not one repeated string
        want = sum(len(enc.encode_ordinary(t)) + 1 for t in texts)  # each document, then <|endoftext|>
        rows = size["tokenize"]["rows"]
        assert [r["workers"] for r in rows] == [1, 2, 1]
        for r in rows:
            assert r["tokens"] == want
            assert _positive(r["tokens_per_s"]) and r["tokens_per_s"] == pytest.approx(want / r["seconds"])
            assert _positive(r["peak_MiB"]) and r["peak_above_MiB"] >= 0
            assert r["peak_MiB"] >= r["before_MiB"] + r["peak_above_MiB"] - 1e-6
        for r in rows[:2]:  # uint16 ids behind a small .npy header
            assert r["dtype"] == "uint16" and 2 * want < r["token_file_bytes"] < 2 * want + 4096
        assert rows[0]["tokens_sha256"] == rows[1]["tokens_sha256"]  # workers do not change the file
        assert rows[-1]["equals_token_file"] is True  # one encode call gives the token file's very ids
        for r in size["train"].values():
            assert r["corpus_tokens"] == want


def test_corpus_training_from_the_token_file_and_from_text_agree(corpus_section):
    trained = [s for s in corpus_section["sizes"] if s["train"]]
    assert [s["target_MB"] for s in trained] == [2]  # a smoke run trains at its larger size only
    runs = trained[0]["train"]
    assert set(runs) == {"tokens", "text"}
    tokens, text = runs["tokens"], runs["text"]
    assert (tokens["ids_dtype"], tokens["memory_mapped"]) == ("uint16", True)
    assert (text["ids_dtype"], text["memory_mapped"]) == ("int32", False)
    # The same ids and seed: the same batches, so the same losses whichever way the ids were stored.
    assert tokens["final_train_loss"] == pytest.approx(text["final_train_loss"], abs=1e-5)
    assert tokens["val_loss"] == pytest.approx(text["val_loss"], abs=1e-5)
    for r in (tokens, text):
        assert r["steps"] == corpus_section["train_steps"]
        assert _positive(r["tokens_per_s"]) and _positive(r["seconds"])
        assert _positive(r["peak_MiB"]) and _positive(r["peak_above_MiB"])


def test_mesh_child_sees_the_simulated_devices(quick):
    results, _, _ = quick
    mesh = results["mesh"]
    assert mesh["device_count"] == 2  # XLA_FLAGS reached the child
    assert [r["devices"] for r in mesh["rows"]] == [1, 2]
    assert all(len(r["times_s"]) == results["settings"]["reps"] and _positive(r["step_s"]) for r in mesh["rows"])


def test_sweep_plot_and_report_files(quick):
    results, out, _ = quick
    rows = results["sweep"]["rows"]
    assert {(r["vocab"], r["length"]) for r in rows} == {(1024, 16), (V, L)}
    assert all(abs(sum(r["shares"].values()) - 1) < 1e-6 for r in rows)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    for heading in (
        "Data pipeline",
        "InputEmbedding forward",
        "Train step",
        "Tiled vs dense loss",
        "How cost grows",
        "Memory",
        "mesh",
        "Corpus",
    ):
        assert heading in table
    temp_mib = next(r for r in results["memory"]["xla"] if r["variant"] == "dense")["temp_bytes"] / 2**20
    assert f"| {temp_mib:,.1f} |" in table  # the memory table shows the run's figure


# --- Structure ----------------------------------------------------------------------------


def _benchmark_imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "benchmarks":
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("benchmarks.")}
    return names


def test_benchmarks_import_downward_only():
    modules = {p.stem: _benchmark_imports(p) for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__"}
    assert modules["harness"] <= set()  # the bottom: imports no other benchmark module
    for name, imports in modules.items():
        if name != "run":
            assert "run" not in imports, f"benchmarks/{name}.py imports run.py"
    assert "prototypes" not in modules["cases"] | modules["harness"] | modules["memory"]


def test_config_override_of_a_missing_field_names_it():
    from benchmarks import harness

    config = harness.make_config(2, 3, 4, {"optim.warmup_steps": 1})
    assert (config.data.batch_size, config.data.max_length, config.model.features) == (2, 3, 4)
    assert config.optim.warmup_steps == 1
    with pytest.raises(KeyError, match="model.no_such_field"):
        harness.make_config(2, 3, 4, {"model.no_such_field": 1})


# --- The reference and the prototypes ----------------------------------------------------


@pytest.mark.parametrize("max_length, stride", [(4, 4), (5, 2), (3, 7), (1, 1)])
def test_reference_windows_equal_jaxembed_windows(max_length, stride):
    from benchmarks.torch_reference import reference_windows
    from jaxembed.data.windows import StridedWindows

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
        monkeypatch.setattr(data.loader, "CHUNK_TOKENS", chunk_tokens)

    ids = np.random.default_rng(1).integers(0, 50257, 700).astype(np.int32)
    for shard_index in range(shard_count):
        kwargs = dict(
            shuffle=True,
            seed=2,
            drop_last=False,
            num_epochs=2,
            shard_index=shard_index,
            shard_count=shard_count,
        )
        sizes = dict(batch_size=6, max_length=5, stride=3)
        want = list(data.create_dataloader(ids, **sizes, **kwargs))
        fast = fast_dataloader(ids, *sizes.values(), **kwargs)
        got = list(fast)
        assert len(got) == len(want)
        for (x, y), (u, v) in zip(got, want, strict=True):
            np.testing.assert_array_equal(x, u)
            np.testing.assert_array_equal(y, v)
        # Its iterator state is the Grain loader's: each restores the other's.
        grain_loader = data.create_dataloader(ids, **sizes, **kwargs)
        for taken in (0, 1, 7, len(want) - 1):
            it, git = iter(fast), iter(grain_loader)
            for _ in range(taken):
                next(it), next(git)
            # The same position; Grain's state also names its loader's settings (checked on set_state).
            grain_state = git.get_state()
            assert it.get_state() == {k: v for k, v in grain_state.items() if k != "loader"}
            assert grain_state["loader"]["batch_size"] == sizes["batch_size"]
            from_fast, from_grain = iter(grain_loader), iter(fast)
            from_fast.set_state(it.get_state())
            from_grain.set_state(git.get_state())
            np.testing.assert_array_equal(next(from_fast)[0], want[taken][0])
            np.testing.assert_array_equal(next(from_grain)[0], want[taken][0])


def test_fused_adamw_prototype_matches_float64_clip_then_adamw():
    import jax.numpy as jnp

    from benchmarks.prototypes import fused_adamw_transformation
    from benchmarks.torch_reference import warmup_cosine
    from jaxembed.config import base_config

    optim = base_config().optim
    optim.warmup_steps, optim.weight_decay, optim.grad_clip = 2, 0.1, 0.5
    total = 10
    rng = np.random.default_rng(0)
    params64 = {"a": rng.standard_normal((5, 3)), "b": rng.standard_normal(4)}
    tx = fused_adamw_transformation(optim, total)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params64.items()}
    state = tx.init(params)
    m = {k: np.zeros_like(v) for k, v in params64.items()}
    n = {k: np.zeros_like(v) for k, v in params64.items()}
    for t in range(1, 5):
        grads64 = {k: 3 * rng.standard_normal(v.shape) for k, v in params64.items()}  # norms above the clip
        updates, state = tx.update({k: jnp.asarray(g, jnp.float32) for k, g in grads64.items()}, state, params)
        params = {k: params[k] + updates[k] for k in params}
        norm = math.sqrt(sum(float((g**2).sum()) for g in grads64.values()))
        scale = min(1.0, optim.grad_clip / norm)
        lr = optim.learning_rate * warmup_cosine(
            t - 1, peak=1.0, warmup_steps=optim.warmup_steps, total_steps=total, end_fraction=optim.final_lr_fraction
        )
        for k, g in grads64.items():
            g = g * scale
            m[k] = optim.b1 * m[k] + (1 - optim.b1) * g
            n[k] = optim.b2 * n[k] + (1 - optim.b2) * g * g
            step = (m[k] / (1 - optim.b1**t)) / (np.sqrt(n[k] / (1 - optim.b2**t)) + 1e-8)
            params64[k] = params64[k] - lr * (step + optim.weight_decay * params64[k])
    for k in params64:
        np.testing.assert_allclose(np.asarray(params[k]), params64[k], rtol=1e-5, atol=1e-6)
