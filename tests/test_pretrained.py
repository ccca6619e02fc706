"""Tests for jaxembed.nn.pretrained: a real safetensors file on a real 127.0.0.1 HTTP server, no mocks."""

from __future__ import annotations

import json
import re
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from served_files import Server

from jaxembed.nn import EmbeddingLM, InputEmbedding
from jaxembed.nn.pretrained import (
    PretrainedUnavailableError,
    download_plan,
    fetch_tables,
    gpt2_cache_paths,
    gpt2_download_plan,
    gpt2_tables,
    load_tables,
)

RNG = np.random.default_rng(0)
WTE = RNG.normal(size=(50, 8)).astype(np.float32)
WPE = RNG.normal(size=(16, 8)).astype(np.float32)
EXTRA = RNG.normal(size=(64, 8)).astype(np.float32)  # must never be downloaded


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A small model.safetensors (wte, wpe and an extra tensor) and each tensor's absolute byte span."""
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    safetensors.numpy.save_file({"wte.weight": WTE, "wpe.weight": WPE, "h.0.attn.c_attn.weight": EXTRA}, path)
    body = path.read_bytes()
    (n,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8 : 8 + n])
    spans = {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items()}
    return body, spans


@pytest.fixture
def serve(checkpoint) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(*, honour_range: bool = True, drop_after: Callable[[int, int], int | None] = lambda a, b: None):
        servers.append(Server(checkpoint[0], honour_range=honour_range, drop_after=drop_after))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def paths(cache: Path, *names: str) -> dict[str, Path]:
    return {name: cache / f"t-{name}.safetensors" for name in names}


def cache_files(folder: Path) -> list[str]:
    """Every file in the cache folder except the lock (which holds no data), temporary files included."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def requested(server: Server) -> list[tuple[int, int]]:
    return [(int(a), int(b) + 1) for a, b in (re.fullmatch(r"bytes=(\d+)-(\d+)", r).groups() for r in server.ranges)]


def overlaps(spans: list[tuple[int, int]], span: tuple[int, int]) -> bool:
    return any(a < span[1] and span[0] < b for a, b in spans)


def test_fetches_exactly_the_tables_then_reads_the_cache(serve, checkpoint, cache: Path) -> None:
    body, spans = checkpoint
    server = serve()
    tables = fetch_tables(server.url, paths(cache, "wte", "wpe"), timeout=5)
    np.testing.assert_array_equal(tables["wte"], WTE)
    np.testing.assert_array_equal(tables["wpe"], WPE)
    assert tables["wte"].dtype == np.float32
    (n,) = struct.unpack("<Q", body[:8])
    assert requested(server) == [(0, 8), (8, 8 + n), spans["wte.weight"], spans["wpe.weight"]]
    assert not overlaps(server.sent, spans["h.0.attn.c_attn.weight"])  # the extra tensor's bytes never sent
    assert cache_files(cache) == ["t-wpe.safetensors", "t-wte.safetensors"]

    again = fetch_tables(server.url, paths(cache, "wte", "wpe"), timeout=5)
    assert len(server.ranges) == 4  # no HTTP at all the second time
    np.testing.assert_array_equal(again["wte"], WTE)
    np.testing.assert_array_equal(again["wpe"], WPE)


def test_positions_only_downloads_no_token_bytes(serve, checkpoint, cache: Path) -> None:
    server = serve()
    tables = fetch_tables(server.url, paths(cache, "wpe"), timeout=5)
    np.testing.assert_array_equal(tables["wpe"], WPE)
    assert list(tables) == ["wpe"]
    assert not overlaps(server.sent, checkpoint[1]["wte.weight"])
    assert cache_files(cache) == ["t-wpe.safetensors"]


def test_download_plan_matches_the_file(serve, checkpoint) -> None:
    body, spans = checkpoint
    (n,) = struct.unpack("<Q", body[:8])
    plan = download_plan(json.loads(body[8 : 8 + n]), header_length=n, names=["wte", "wpe"], url="u")
    assert [(r.name, (r.start, r.stop), r.nbytes) for r in plan.ranges] == [
        ("wte.weight", spans["wte.weight"], WTE.nbytes),
        ("wpe.weight", spans["wpe.weight"], WPE.nbytes),
    ]
    assert plan.total_bytes == 8 + n + WTE.nbytes + WPE.nbytes
    assert f"bytes={spans['wte.weight'][0]}-{spans['wte.weight'][1] - 1}" in plan.describe()
    # Names with the "transformer." prefix (other exports) are found too.
    prefixed = {"transformer.wpe.weight": {"dtype": "F32", "shape": [16, 8], "data_offsets": [0, 512]}}
    assert download_plan(prefixed, header_length=96, names=["wpe"]).ranges[0].name == "transformer.wpe.weight"
    with pytest.raises(PretrainedUnavailableError, match="no tensor wte.weight"):
        download_plan(prefixed, header_length=96, names=["wte"])
    bad = {"wpe.weight": {"dtype": "F32", "shape": [16, 8], "data_offsets": [0, 500]}}
    with pytest.raises(PretrainedUnavailableError, match=r"data_offsets \[0, 500\] do not hold F32 \[16, 8\]"):
        download_plan(bad, header_length=96, names=["wpe"])
    # gpt2_download_plan asks the server for the header only.
    server = serve()
    plan = gpt2_download_plan(positions_only=True, url=server.url)
    assert [(r.start, r.stop) for r in plan.ranges] == [spans["wpe.weight"]] and len(server.ranges) == 2


def test_server_ignoring_range_still_gives_the_right_tables(serve, cache: Path) -> None:
    server = serve(honour_range=False)
    tables = fetch_tables(server.url, paths(cache, "wte", "wpe"), timeout=5)
    np.testing.assert_array_equal(tables["wte"], WTE)
    np.testing.assert_array_equal(tables["wpe"], WPE)
    assert cache_files(cache) == ["t-wpe.safetensors", "t-wte.safetensors"]


@pytest.mark.parametrize("honour_range", [True, False])
def test_dropped_connection_is_a_clear_error_and_caches_nothing(serve, checkpoint, cache: Path, honour_range) -> None:
    wte_stop = checkpoint[1]["wte.weight"][1]
    # Cut every response that should carry the whole of wte halfway through it.
    server = serve(honour_range=honour_range, drop_after=lambda a, b: (wte_stop - a) // 2 if b >= wte_stop else None)
    with pytest.raises(PretrainedUnavailableError) as info:
        fetch_tables(server.url, paths(cache, "wte"), timeout=5)
    message = str(info.value)
    assert "\n" not in message and server.url in message and "connection closed after" in message
    assert str(cache / "t-wte.safetensors") in message
    assert cache_files(cache) == []  # no table, no temporary file


def test_unreachable_url_is_one_line_naming_the_cache_paths(cache: Path) -> None:
    with socket.socket() as s:  # bound, not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/model.safetensors"
        with pytest.raises(PretrainedUnavailableError) as info:
            gpt2_tables(url=url, cache=cache, timeout=5)
    message = str(info.value)
    assert "\n" not in message and url in message and "connection refused" in message
    for path in gpt2_cache_paths(cache=cache).values():
        assert str(path) in message
    assert "$JAXEMBED_GPT2_URL" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert cache_files(cache) == []


def test_http_error_and_non_safetensors_are_clear(serve, cache: Path, tmp_path: Path) -> None:
    server = serve()
    with pytest.raises(PretrainedUnavailableError, match="HTTP 404"):
        fetch_tables(server.url.replace("/model", "/missing"), paths(cache, "wpe"), timeout=5)
    page = tmp_path / "page.html"
    page.write_bytes(b"<html>" + b" " * 100)
    with pytest.raises(PretrainedUnavailableError, match="not a safetensors file"):
        fetch_tables(str(page), paths(cache, "wpe"))
    assert cache_files(cache) == []


def test_corrupted_cache_file_is_detected(serve, cache: Path) -> None:
    server = serve()
    fetch_tables(server.url, paths(cache, "wte"), timeout=5)
    path = cache / "t-wte.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # one bit of one float
    path.write_bytes(bytes(raw))
    with pytest.raises(PretrainedUnavailableError) as info:
        fetch_tables(server.url, paths(cache, "wte"), timeout=5)
    assert str(path) in str(info.value) and "damaged" in str(info.value) and "delete it" in str(info.value)
    path.write_bytes(b"\xff" * 8 + bytes(raw[8:]))  # a header length that cannot be
    with pytest.raises(PretrainedUnavailableError, match="not a valid safetensors file"):
        fetch_tables(server.url, paths(cache, "wte"), timeout=5)
    assert len(server.ranges) == 3  # the damaged file was reported, not silently downloaded again


def test_gpt2_tables_from_a_mirror(serve, cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A file with GPT-2's real wpe shape (3 MB); its small wte has the wrong shape for 124M.
    wpe = RNG.normal(size=(1024, 768)).astype(np.float32)
    mirror = tmp_path / "mirror.safetensors"
    safetensors.numpy.save_file({"wte.weight": WTE, "wpe.weight": wpe}, mirror)
    server = Server(mirror.read_bytes(), drop_after=lambda a, b: None)
    try:
        monkeypatch.setenv("JAXEMBED_GPT2_URL", server.url)
        wte, got = gpt2_tables(positions_only=True, cache=cache)
        assert wte is None
        np.testing.assert_array_equal(got, wpe)
        assert cache_files(cache) == ["gpt2-124M-wpe.safetensors"]
        with pytest.raises(
            PretrainedUnavailableError, match=r"wte.weight as \[50, 8\], not the expected \[50257, 768\]"
        ):
            gpt2_tables(cache=cache)
        (n,) = struct.unpack("<Q", mirror.read_bytes()[:8])
        begin, end = json.loads(mirror.read_bytes()[8 : 8 + n])["wte.weight"]["data_offsets"]
        assert not overlaps(requested(server), (8 + n + begin, 8 + n + end))  # the shape was refused from the header
    finally:
        server.close()
    with pytest.raises(ValueError, match=r"size='355M' is not allowed: choose one of '124M'"):
        gpt2_tables("355M")


def test_load_tables_into_embedding_lm_params() -> None:
    lm = EmbeddingLM(vocab_size=50, max_length=12, features=8, vocab_multiple=16, param_dtype=jnp.bfloat16)
    params = lm.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32))
    new = load_tables(params, WTE, WPE, vocab_size=50)
    token = new["params"]["embed"]["token"]["embedding"]
    position = new["params"]["embed"]["position"]["embedding"]
    assert isinstance(token, nn.Partitioned) and token.names == ("vocab", "embed")
    assert token.value.dtype == jnp.bfloat16 and token.value.shape == (64, 8)
    np.testing.assert_array_equal(np.asarray(token.value[:50], np.float32), WTE.astype(jnp.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(token.value[50:], np.float32), 0.0)  # padding rows zeroed
    np.testing.assert_array_equal(
        np.asarray(position.value, np.float32), WPE[:12].astype(jnp.bfloat16).astype(np.float32)
    )
    # The old params are unchanged, and the model runs on the new ones.
    assert not np.array_equal(np.asarray(params["params"]["embed"]["position"]["embedding"].value[:12]), position.value)
    ids = jnp.arange(12)[None] % 50
    h = lm.apply(new, ids, method=EmbeddingLM.hidden)
    np.testing.assert_allclose(np.asarray(h, np.float32), np.asarray(token.value[ids] + position.value, np.float32))
    # Only the positions: the token table stays.
    positions_only = load_tables(params, None, WPE)
    assert positions_only["params"]["embed"]["token"] is params["params"]["embed"]["token"]


def test_load_tables_into_input_embedding_params() -> None:
    embed = InputEmbedding(vocab_size=50, max_length=16, features=8)
    params = embed.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    new = load_tables(params, WTE, WPE)
    np.testing.assert_array_equal(np.asarray(new["params"]["token"]["embedding"]), WTE)
    np.testing.assert_array_equal(np.asarray(new["params"]["position"]["embedding"]), WPE)


def test_load_tables_rejects_mismatched_sizes() -> None:
    lm = EmbeddingLM(vocab_size=50, max_length=32, features=4, vocab_multiple=16)
    params = lm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"token_VxD is 8 wide but the model's token table is 4 wide \(features=4\)"):
        load_tables(params, WTE, vocab_size=50)
    with pytest.raises(ValueError, match=r"token_VxD has 50 rows but the model's vocabulary has 64 \(a padded table"):
        load_tables(params, WTE[:, :4])
    with pytest.raises(ValueError, match=r"token_VxD has 49 rows but the model's vocabulary has 50"):
        load_tables(params, WTE[:49, :4], vocab_size=50)
    with pytest.raises(ValueError, match=r"max_length=32 is longer than the 16 positions of position_LxD"):
        load_tables(params, None, WPE[:, :4])
    with pytest.raises(ValueError, match="needs token_VxD or position_LxD"):
        load_tables(params)
    with pytest.raises(ValueError, match="params holds no embedding tables"):
        load_tables({"params": {}}, WTE)
