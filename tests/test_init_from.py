"""model.init_from = "gpt2": training starts from GPT-2's tables, served by a real 127.0.0.1 HTTP server.

The server holds a synthetic checkpoint of GPT-2 124M's shapes (wte F16 [50257, 768], wpe F16
[1024, 768] and one tensor that is never asked for), drawn from a seeded rng; the expected
values are computed here with numpy from what was written, never read from jaxembed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from safetensors_server import Server

from jaxembed import cli
from jaxembed.config import GPT2_POSITIONS, GPT2_WIDTH, named_config
from jaxembed.nn import EmbeddingLM, init_from_gpt2, table_init
from jaxembed.nn.pretrained import GPT2_SHAPES, gpt2_cache_paths
from jaxembed.train import train_and_evaluate

V, P, D = 50257, 1024, 768
L = 8  # a short context: the test is about the tables, not the training


@pytest.fixture(scope="module")
def gpt2_file(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A GPT-2-shaped model.safetensors (~80 MB) and its wte, wpe as float32."""
    rng = np.random.default_rng(124)
    wte = (rng.standard_normal((V, D), np.float32) * 0.1).astype(np.float16)
    wpe = (rng.standard_normal((P, D), np.float32) * 0.02).astype(np.float16)
    path = tmp_path_factory.mktemp("gpt2") / "model.safetensors"
    tensors = {"wte.weight": wte, "wpe.weight": wpe, "h.0.ln_1.weight": np.ones(D, np.float16)}
    safetensors.numpy.save_file(tensors, path)
    return path, wte.astype(np.float32), wpe.astype(np.float32)


@pytest.fixture(scope="module")
def server(gpt2_file) -> Iterator[Server]:
    server = Server(gpt2_file[0].read_bytes())
    yield server
    server.close()


@pytest.fixture
def gpt2_env(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points the GPT-2 download at the server and the cache at a new folder (returned)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("JAXEMBED_GPT2_URL", server.url)
    monkeypatch.setenv("JAXEMBED_CACHE", str(cache))
    return cache


def test_the_config_rules_know_gpt2s_shapes() -> None:
    assert GPT2_SHAPES["124M"] == {"wte": (V, D), "wpe": (P, D)}
    assert (GPT2_WIDTH, GPT2_POSITIONS) == (D, P)


def gpt2_config(**model):
    config = named_config("tiny")
    config.model.init_from, config.model.features, config.model.num_layers = "gpt2", D, 0
    config.data.max_length = config.data.stride = L
    config.data.batch_size = 2
    config.train.steps, config.train.eval_batches = 1, 1
    config.train.log_every = config.train.eval_every = config.train.checkpoint_every = 1
    for name, value in model.items():
        config.model[name] = value
    return config


def unboxed(params) -> dict:
    return nn.unbox(params)["params"]["embed"]


def test_a_run_starts_from_gpt2_and_a_resume_does_not_fetch_again(
    gpt2_file, server: Server, gpt2_env: Path, text_path: Path, tmp_path: Path, caplog
) -> None:
    _, wte, wpe = gpt2_file
    text = text_path.read_text(encoding="utf-8")[:8000]
    workdir = tmp_path / "run"
    before = len(server.ranges)
    with caplog.at_level(logging.INFO, logger="jaxembed"):
        result = train_and_evaluate(gpt2_config(), workdir, text=text, progress=False)
    assert len(server.ranges) - before == 4  # header length, header, wte, wpe: the other tensor is never fetched
    assert "Token and position tables start from GPT-2 124M (" + server.url in caplog.text

    embed = unboxed(result.initial_params)
    token, position = np.asarray(embed["token"]["embedding"]), np.asarray(embed["position"]["embedding"])
    assert token.dtype == np.float32 and token.shape == (50304, D)  # padded to vocab_multiple=128
    np.testing.assert_array_equal(token[:V], wte)
    np.testing.assert_array_equal(token[V:], 0.0)
    np.testing.assert_array_equal(position, wpe[:L])
    # The loaded tables keep the state's layout: the shardings the train step's state has.
    for name in ("token", "position"):
        loaded, trained = embed[name]["embedding"], unboxed(result.state.params)[name]["embedding"]
        assert loaded.sharding.is_equivalent_to(trained.sharding, 2)

    # The tied head at init, against numpy: h = wte[ids] + wpe[:L], logits = h @ wte.T.
    ids = np.array([[464, 3290, 286, 11, 50256, 0, 13, 262]])
    logits = np.asarray(result.model.apply(result.initial_params, jnp.asarray(ids)), np.float64)
    h = wte[ids[0]].astype(np.float64) + wpe[:L].astype(np.float64)
    np.testing.assert_allclose(logits[0], h @ wte.T.astype(np.float64), rtol=1e-4, atol=1e-4)

    # Resuming: the tables come from the cache (for the report's "before training"), the server is not asked.
    asked = len(server.ranges)
    config = gpt2_config()
    config.train.steps = 2
    resumed = train_and_evaluate(config, workdir, text=text, progress=False)
    assert resumed.start_step == 1 and int(resumed.state.step) == 2
    assert len(server.ranges) == asked
    np.testing.assert_array_equal(np.asarray(unboxed(resumed.initial_params)["token"]["embedding"])[:V], wte)


def test_without_a_position_table_only_the_token_table_is_loaded(gpt2_file, server: Server, gpt2_env: Path) -> None:
    _, wte, _ = gpt2_file
    lm = EmbeddingLM(vocab_size=V, max_length=L, features=D, position="sinusoidal", vocab_multiple=128)
    # Zeros of init's shapes and boxes: drawing 38.6 M random numbers would only cost time here.
    abstract = jax.eval_shape(lm.init, jax.random.key(0), jnp.zeros((1, L), jnp.int32))
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract)
    new = init_from_gpt2(params, vocab_size=V, position=False)
    np.testing.assert_array_equal(np.asarray(unboxed(new)["token"]["embedding"])[:V], wte)
    cached = sorted(path.name for path in gpt2_env.glob("*.safetensors"))
    assert cached == sorted(path.name for path in gpt2_cache_paths(cache=gpt2_env).values())
    with pytest.raises(ValueError, match="no position table"):
        init_from_gpt2(params, vocab_size=V)  # a learned-positions load into a sinusoidal model


def test_table_init_starts_a_module_from_the_rows(gpt2_file) -> None:
    _, _, wpe = gpt2_file
    from jaxembed.nn import PositionalEmbedding

    pos = PositionalEmbedding(max_length=L, features=D, embedding_init=table_init(wpe, first_rows=True))
    np.testing.assert_array_equal(np.asarray(pos.init(jax.random.key(0), L)["params"]["embedding"]), wpe[:L])
    with pytest.raises(ValueError, match=r"widths must match \(features=768\)"):
        table_init(wpe)(jax.random.key(0), (P, 32))
    with pytest.raises(ValueError, match=r"more than the 16 of the parameter"):
        table_init(wpe)(jax.random.key(0), (16, D))


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(["train", *map(str, args), "--no-progress"])
    return code, capsys.readouterr().err.strip()


def test_a_width_other_than_768_is_refused_in_one_line(gpt2_env: Path, text_path: Path, tmp_path: Path, capsys):
    workdir = tmp_path / "run"
    code, err = run_cli(
        ["--workdir", workdir, "--text", text_path, "--config.model.init_from=gpt2", "--config.model.features=32"],
        capsys,
    )
    assert code == 2 and "\n" not in err and "model.features=32" in err and "model.init_from='gpt2'" in err, err
    assert not workdir.exists() and not gpt2_env.exists()  # refused before anything was written or fetched


def test_no_network_is_one_line_naming_the_url_and_the_cache(
    gpt2_env: Path, text_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    with socket.socket() as s:  # bound, not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/model.safetensors"
        monkeypatch.setenv("JAXEMBED_GPT2_URL", url)
        workdir = tmp_path / "run"
        code, err = run_cli(
            [
                "--workdir",
                workdir,
                "--text",
                text_path,
                "--config.model.init_from=gpt2",
                f"--config.model.features={D}",
            ],
            capsys,
        )
    assert code == 2 and "\n" not in err, err
    assert err.startswith("jaxembed train: error: could not download wte+wpe from " + url)
    assert str(gpt2_cache_paths(cache=gpt2_env)["wte"]) in err
    assert not workdir.exists()  # no debris
    assert not list(gpt2_env.glob("*.safetensors"))
