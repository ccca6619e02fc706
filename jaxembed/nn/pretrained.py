"""GPT-2's pretrained token and position tables, fetched by the byte range, and put into params.

``gpt2_tables()`` returns GPT-2 124M's ``wte`` (token table, ``[50257, 768]``) and ``wpe``
(position table, ``[1024, 768]``) as float32 numpy, taken from the public checkpoint
``model.safetensors`` of ``openai-community/gpt2`` at a pinned revision (``GPT2_URL``). The
file is 548 MB; only the two tables (157,535,232 bytes, 3 MB with ``positions_only``) and
the file's header are downloaded, with HTTP Range requests:

1. bytes ``0-7``: the header length ``N``, a little-endian u64;
2. bytes ``8 .. 8+N-1``: the JSON header (each tensor's dtype, shape and ``data_offsets``,
   counted from the first byte after the header);
3. for each table, exactly its bytes ``8+N+begin .. 8+N+end-1``.

``download_plan`` says which ranges those are for a given header; ``gpt2_download_plan``
fetches the real header and says it. The ``safetensors`` package cannot do the fetching:
it reads local files and in-memory bytes only, with no ranged reads over HTTP, so this
module fetches the header and the ranges itself, assembles a one-tensor safetensors file
from each table's header entry and bytes, and lets ``safetensors`` parse it (dtypes,
shapes, byte counts) and read it back.

Each table is cached once, beside the corpora (``jaxembed.text.cache_dir()``), as
``gpt2-124M-wte.safetensors`` and ``gpt2-124M-wpe.safetensors``: written atomically
under a file lock, so no reader sees half a file and two processes download once. The
file's metadata records where it came from (URL, tensor name, the header entry) and the
SHA-256 of the tensor's bytes, checked on every read, so a damaged file is an error,
never silently wrong numbers. ``$JAXEMBED_GPT2_URL`` (or ``url=``) points at a mirror
or a local copy of ``model.safetensors``; the cache is keyed by size, not source.

``load_tables`` puts tables into ``EmbeddingLM`` or ``InputEmbedding`` params;
``init_from_gpt2`` fetches GPT-2's and puts them there (what ``model.init_from = "gpt2"``
runs); ``table_init`` is a Flax initializer that starts a module's table from given rows.

Example (offline: a header built in memory):
  >>> header = {
  ...     "wpe.weight": {"dtype": "F32", "shape": [1024, 768], "data_offsets": [0, 3145728]},
  ...     "wte.weight": {"dtype": "F32", "shape": [50257, 768], "data_offsets": [3145728, 157535232]},
  ... }
  >>> plan = download_plan(header, header_length=160, names=("wte", "wpe"))
  >>> [(r.name, r.start, r.stop, r.nbytes) for r in plan.ranges]
  [('wte.weight', 3145896, 157535400, 154389504), ('wpe.weight', 168, 3145896, 3145728)]
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import math
import os
import struct
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import filelock
import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from jaxembed.errors import InvalidArgumentError, InvalidTypeError, JaxembedError
from jaxembed.fileio import atomic_open
from jaxembed.text.corpus import cache_dir, describe_network_error

__all__ = [
    "DEFAULT_TIMEOUT",
    "GPT2_REVISION",
    "GPT2_SHAPES",
    "GPT2_URL",
    "ByteRange",
    "DownloadPlan",
    "PretrainedUnavailableError",
    "download_plan",
    "fetch_tables",
    "gpt2_cache_paths",
    "gpt2_download_plan",
    "gpt2_source",
    "gpt2_tables",
    "init_from_gpt2",
    "load_tables",
    "table_init",
]

#: The commit of huggingface.co/openai-community/gpt2 the tables come from (pinned, so the
#: numbers cannot change under a run; ``main`` could move).
GPT2_REVISION = "607a30d783dfa663caf39e06633721c8d4cfcd7e"
GPT2_URL = f"https://huggingface.co/openai-community/gpt2/resolve/{GPT2_REVISION}/model.safetensors"
#: Table shapes per model size: rows x features (float32 in the checkpoint).
GPT2_SHAPES: dict[str, dict[str, tuple[int, int]]] = {"124M": {"wte": (50257, 768), "wpe": (1024, 768)}}
DEFAULT_TIMEOUT = 30.0  # seconds one read may stall; not a bound on the whole (157 MB) download

# safetensors' own limit on the header; a bigger "length" means this is not a safetensors file.
_MAX_HEADER_BYTES = 100_000_000
# Bytes per element of the dtypes a table may be stored in (all become float32).
_ITEMSIZE = {"F16": 2, "F32": 4, "F64": 8}
_CHUNK = 1 << 20
_FORMAT = "jaxembed pretrained table v1"  # marks the files this module writes


class PretrainedUnavailableError(JaxembedError, RuntimeError):
    """Pretrained tables are neither cached intact nor downloadable right now; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class ByteRange:
    """One tensor's bytes in the source file: ``[start, stop)``, absolute offsets from byte 0."""

    name: str  # the tensor's name in the file, e.g. "wte.weight"
    dtype: str  # safetensors dtype, e.g. "F32"
    shape: tuple[int, ...]
    start: int
    stop: int

    @property
    def nbytes(self) -> int:
        return self.stop - self.start

    def http_range(self) -> str:
        """The ``Range`` header value (HTTP ranges are inclusive)."""
        return f"bytes={self.start}-{self.stop - 1}"


@dataclasses.dataclass(frozen=True)
class DownloadPlan:
    """Exactly what fetching some tables from one safetensors file downloads.

    ``ranges`` follow the order of the names asked for; ``header_length`` is ``N``, the
    JSON header's size, which the first 8 bytes of the file give.
    """

    url: str
    header_length: int
    ranges: tuple[ByteRange, ...]

    @property
    def total_bytes(self) -> int:
        """Everything downloaded: 8 + ``header_length`` + the tensors' bytes."""
        return 8 + self.header_length + sum(r.nbytes for r in self.ranges)

    def describe(self) -> str:
        """The plan as lines of text: one per HTTP request.

        Example:
          >>> header = {"wpe.weight": {"dtype": "F32", "shape": [16, 8], "data_offsets": [0, 512]}}
          >>> print(download_plan(header, header_length=80, names=("wpe",), url="http://mirror/m.safetensors").describe())
          GET http://mirror/m.safetensors, 3 requests, 600 bytes in all:
            Range: bytes=0-7      8 bytes  header length (little-endian u64)
            Range: bytes=8-87    80 bytes  JSON header
            Range: bytes=88-599 512 bytes  wpe.weight F32 [16, 8]
        """
        rows = [
            ("bytes=0-7", 8, "header length (little-endian u64)"),
            (f"bytes=8-{8 + self.header_length - 1}", self.header_length, "JSON header"),
        ]
        rows += [(r.http_range(), r.nbytes, f"{r.name} {r.dtype} {list(r.shape)}") for r in self.ranges]
        width = max(len(span) for span, _, _ in rows)
        size_width = max(len(f"{size:,}") for _, size, _ in rows)
        lines = [f"GET {self.url}, {len(rows)} requests, {self.total_bytes:,} bytes in all:"]
        lines += [f"  Range: {span:<{width}} {size:>{size_width},} bytes  {what}" for span, size, what in rows]
        return "\n".join(lines)


def download_plan(
    header: Mapping[str, Any], *, header_length: int, names: Sequence[str], url: str = GPT2_URL
) -> DownloadPlan:
    """The byte ranges of the tables ``names`` in a safetensors file with this ``header``.

    Args:
      header: the file's parsed JSON header (``{tensor: {"dtype", "shape", "data_offsets"}}``,
        plus an optional ``"__metadata__"``).
      header_length: ``N``, the header's size in bytes (the file's first 8 bytes).
      names: tables to fetch, e.g. ``("wte", "wpe")``; ``"wte"`` matches the tensor
        ``wte.weight`` (GPT-2's file) or ``transformer.wte.weight`` (other exports).
      url: the file's address, for the plan's description only.

    Returns:
      A ``DownloadPlan`` whose ranges are absolute offsets: ``8 + N + data_offsets``.

    Raises:
      PretrainedUnavailableError: a table is missing from the header, or its entry is
        malformed (dtype not one of F16/F32/F64, byte count not shape x itemsize).

    Example:
      >>> header = {"wte.weight": {"dtype": "F32", "shape": [50, 8], "data_offsets": [0, 1600]}}
      >>> download_plan(header, header_length=72, names=["wte"]).ranges[0].http_range()
      'bytes=80-1679'
    """
    ranges = []
    for name in names:
        key = _tensor_key(header, name, url)
        entry = header[key]
        where = f"tensor {key!r} in the header of {url}"
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            valid = all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end))
        except (KeyError, TypeError, ValueError):
            raise PretrainedUnavailableError(f"{where} is malformed: {entry!r}") from None
        if dtype not in _ITEMSIZE:
            raise PretrainedUnavailableError(
                f"{where} has dtype {dtype!r}; a table must be one of {', '.join(_ITEMSIZE)}."
            )
        if not valid or end - begin != math.prod(shape) * _ITEMSIZE[dtype]:
            raise PretrainedUnavailableError(
                f"{where} is malformed: data_offsets {[begin, end]} do not hold {dtype} {list(shape)}."
            )
        start = 8 + header_length + begin
        ranges.append(ByteRange(key, dtype, shape, start, start + (end - begin)))
    return DownloadPlan(url, header_length, tuple(ranges))


def gpt2_cache_paths(size: str = "124M", *, cache: Path | None = None) -> dict[str, Path]:
    """Where each GPT-2 table of ``size`` is (or will be) cached: ``{"wte": path, "wpe": path}``.

    Raises:
      InvalidArgumentError: ``size`` is not one of ``GPT2_SHAPES``.

    Example:
      >>> {name: path.name for name, path in gpt2_cache_paths().items()}
      {'wte': 'gpt2-124M-wte.safetensors', 'wpe': 'gpt2-124M-wpe.safetensors'}
    """
    _check_size(size)
    folder = Path(cache) if cache is not None else cache_dir()
    return {name: folder / f"gpt2-{size}-{name}.safetensors" for name in GPT2_SHAPES[size]}


def gpt2_tables(
    size: str = "124M",
    *,
    positions_only: bool = False,
    url: str | None = None,
    cache: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[np.ndarray | None, np.ndarray]:
    """GPT-2's token table ``wte`` and position table ``wpe``, as float32 numpy.

    Downloads them once (only their byte ranges, see the module docstring), then reads
    them from the cache with no network at all.

    Args:
      size: the model size; only ``"124M"`` (GPT-2 small: 50,257 tokens, 1,024
        positions, 768 features).
      positions_only: fetch and return only ``wpe`` (3 MB instead of 157 MB);
        the token table comes back as ``None``.
      url: the ``model.safetensors`` to read: an ``http(s)://`` address that honours
        Range requests (a server that ignores them still works, but streams the file up
        to each table), or a local path / ``file://`` URL. Default ``$JAXEMBED_GPT2_URL``,
        else ``GPT2_URL`` (the pinned Hugging Face revision).
      cache: the folder for the cached tables; default ``jaxembed.text.cache_dir()``.
      timeout: seconds one network read may stall before giving up.

    Returns:
      ``(wte_VxD, wpe_LxD)``: float32 ``[50257, 768]`` (or ``None``) and ``[1024, 768]``.

    Raises:
      InvalidArgumentError: ``size`` is not one of ``GPT2_SHAPES``.
      PretrainedUnavailableError: the source cannot be reached or sent something else
        than the expected tables (the message names the URL and where to place the
        files by hand), or a cached file is damaged (the message names it: delete it).

    Example (offline: a local stand-in for model.safetensors; ``gpt2_tables()`` reads the real one):
      >>> import pathlib, tempfile, safetensors.numpy
      >>> folder = pathlib.Path(tempfile.mkdtemp())
      >>> wpe = np.random.default_rng(0).normal(size=(1024, 768)).astype(np.float32)
      >>> safetensors.numpy.save_file({"wpe.weight": wpe, "h.0.ln_1.bias": np.zeros(768, np.float32)}, folder / "m.st")
      >>> wte_VxD, wpe_LxD = gpt2_tables(positions_only=True, url=str(folder / "m.st"), cache=folder / "cache")
      >>> wte_VxD is None, wpe_LxD.shape, bool((wpe_LxD == wpe).all())
      (True, (1024, 768), True)
      >>> sorted(p.name for p in (folder / "cache").glob("*.safetensors"))
      ['gpt2-124M-wpe.safetensors']
    """
    paths = gpt2_cache_paths(size, cache=cache)
    names = ("wpe",) if positions_only else ("wte", "wpe")
    tables = fetch_tables(
        gpt2_source(url), {name: paths[name] for name in names}, shapes=GPT2_SHAPES[size], timeout=timeout
    )
    return tables.get("wte"), tables["wpe"]


def gpt2_download_plan(
    size: str = "124M", *, positions_only: bool = False, url: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> DownloadPlan:
    """What ``gpt2_tables`` would download: fetches the source's header (about 8 + N bytes) and plans.

    ``print(gpt2_download_plan().describe())`` shows the URL, the Range of every
    request and its size. For GPT-2 124M, wte is 50257 x 768 x 4 = 154,389,504 bytes
    and wpe 1024 x 768 x 4 = 3,145,728 bytes; where they sit depends on the header.

    Raises:
      InvalidArgumentError: ``size`` is not one of ``GPT2_SHAPES``.
      PretrainedUnavailableError: the header cannot be fetched or parsed.

    Example (offline: a local stand-in for model.safetensors):
      >>> import pathlib, tempfile, safetensors.numpy
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.st"
      >>> safetensors.numpy.save_file({"wpe.weight": np.zeros((1024, 768), np.float32)}, path)
      >>> plan = gpt2_download_plan(positions_only=True, url=str(path))
      >>> plan.header_length, plan.ranges[0].http_range(), plan.total_bytes
      (80, 'bytes=88-3145815', 3145816)
    """
    _check_size(size)
    source = gpt2_source(url)
    names = ("wpe",) if positions_only else ("wte", "wpe")
    try:
        header_length, header = _read_header(source, timeout)
    except _TransferError as e:
        raise PretrainedUnavailableError(f"could not read the header of {source}: {e}") from None
    return download_plan(header, header_length=header_length, names=names, url=source)


def fetch_tables(
    url: str,
    paths: Mapping[str, Path],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, np.ndarray]:
    """Tables from the safetensors file at ``url``, each cached at its own path; what ``gpt2_tables`` runs.

    Tables already cached are read (and their SHA-256 checked) without any network; the
    others are fetched by byte range, written atomically, then read back the same way.
    A lock beside each set of paths makes concurrent callers download once.

    Args:
      url: ``http(s)://`` address, local path or ``file://`` URL of a safetensors file.
      paths: ``{name: cache path}``; ``name`` as in ``download_plan`` (e.g. ``"wte"``).
      shapes: optional ``{name: shape}`` each table must have (checked in the header,
        before its bytes are fetched, and on every read).
      timeout: seconds one network read may stall.

    Returns:
      ``{name: float32 array}`` for every name in ``paths``.

    Raises:
      PretrainedUnavailableError: see ``gpt2_tables``.

    Example (offline: a local file; an ``http://`` URL is read the same way, by range):
      >>> import pathlib, tempfile, safetensors.numpy
      >>> folder = pathlib.Path(tempfile.mkdtemp())
      >>> wte = np.arange(12, dtype=np.float16).reshape(4, 3)
      >>> safetensors.numpy.save_file({"transformer.wte.weight": wte}, folder / "m.st")
      >>> tables = fetch_tables(str(folder / "m.st"), {"wte": folder / "wte.safetensors"}, shapes={"wte": (4, 3)})
      >>> tables["wte"].dtype, tables["wte"][3].tolist()
      (dtype('float32'), [9.0, 10.0, 11.0])
    """
    paths = {name: Path(path) for name, path in paths.items()}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        folder = paths[missing[0]].parent
        folder.mkdir(parents=True, exist_ok=True)
        lock_name = "." + "+".join(sorted(p.stem for p in paths.values())) + ".lock"
        with filelock.FileLock(folder / lock_name):
            missing = [name for name in missing if not paths[name].is_file()]  # another process may have won
            if missing:
                _download(url, {name: paths[name] for name in missing}, shapes or {}, timeout)
    return {name: _read_cached(path, (shapes or {}).get(name)) for name, path in paths.items()}


def load_tables(
    params: Any,
    token_VxD: np.ndarray | None = None,
    position_LxD: np.ndarray | None = None,
    *,
    vocab_size: int | None = None,
) -> Any:
    """``params`` with the token table and/or the first ``L`` positions replaced (a new tree; the input is unchanged).

    Works on ``EmbeddingLM`` params (``["params"]["embed"]["token"|"position"]["embedding"]``)
    and ``InputEmbedding`` params (``["params"]["token"|"position"]["embedding"]``), boxed
    (``nn.Partitioned``, kept with their axis names) or plain. Each new table takes the old
    one's dtype (``param_dtype``) and, for a jax array, its sharding.

    Args:
      params: the model's variables, as ``model.init`` returns them.
      token_VxD: ``[V, D]`` rows for token ids ``0 .. V-1`` (GPT-2: ``[50257, 768]``), or ``None``
        to keep the token table. Padding rows of a padded table (``vocab_multiple``) are
        set to zero: they are never looked up (NaN) and are cut from the logits, and zero
        needs no read of the old, possibly sharded, values.
      position_LxD: ``[P, D]`` position rows (GPT-2: ``[1024, 768]``); the first ``L``
        (the model's ``max_length``) are used. ``None`` keeps the position table.
      vocab_size: the model's ``vocab_size`` when its token table is padded; must then
        equal ``V``. Without it the table must have exactly ``V`` rows.

    Returns:
      The same structure with the tables replaced.

    Raises:
      InvalidArgumentError: the widths differ (``features``), the vocabularies differ,
        ``max_length`` exceeds ``P``, both tables are ``None``, or ``params`` holds no
        embedding tables.
      InvalidTypeError: a table is not a 2-D numeric array.

    Example:
      >>> from jaxembed.nn.model import EmbeddingLM
      >>> lm = EmbeddingLM(vocab_size=10, max_length=4, features=3, vocab_multiple=8)
      >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
      >>> token_VxD = np.arange(30, dtype=np.float32).reshape(10, 3)
      >>> position_LxD = np.ones((6, 3), np.float32)
      >>> new = load_tables(params, token_VxD, position_LxD, vocab_size=10)
      >>> table = nn.unbox(new)["params"]["embed"]["token"]["embedding"]
      >>> table.shape, float(table[9, 2]), float(table[15].sum())
      ((16, 3), 29.0, 0.0)
      >>> isinstance(new["params"]["embed"]["position"]["embedding"], nn.Partitioned)  # the box is kept
      True
      >>> load_tables(params, np.zeros((10, 768), np.float32), vocab_size=10)
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: token_VxD is 768 wide but the model's token table is 3 wide (features=3); they must match.
    """
    if token_VxD is None and position_LxD is None:
        raise InvalidArgumentError("load_tables needs token_VxD or position_LxD (both are None).")
    inner = params.get("params", {}) if isinstance(params, Mapping) else {}
    prefix = ("params", "embed") if "embed" in inner else ("params",)
    scope = inner.get("embed", inner) if isinstance(inner, Mapping) else {}
    if not (isinstance(scope, Mapping) and "token" in scope):
        raise InvalidArgumentError(
            "params holds no embedding tables: expected EmbeddingLM params (params['params']['embed']"
            "['token'|'position']['embedding']) or InputEmbedding params (params['params']['token'|'position']...)."
        )
    if position_LxD is not None and "position" not in scope:
        # Sinusoidal, rotary, ALiBi and no positions have no learned table to fill.
        raise InvalidArgumentError(
            "params holds no position table (a model with position other than 'learned'); pass position_LxD=None."
        )
    new = params
    if token_VxD is not None:
        old = scope["token"]["embedding"]
        rows, width = _old_shape(old)
        table = _table_2d(token_VxD, "token_VxD", width)
        expected = rows if vocab_size is None else vocab_size
        if vocab_size is not None and not (isinstance(vocab_size, int) and 1 <= vocab_size <= rows):
            raise InvalidArgumentError(
                f"vocab_size={vocab_size!r} is not allowed: it must be an integer in [1, {rows}] "
                f"(the token table's rows, padding included)."
            )
        if table.shape[0] != expected:
            hint = "" if vocab_size is not None else " (a padded table: pass vocab_size=, the model's vocab_size)"
            raise InvalidArgumentError(
                f"token_VxD has {table.shape[0]:,} rows but the model's vocabulary has {expected:,}{hint}; "
                f"they must match (the token ids would mean other tokens)."
            )
        full = np.zeros((rows, width), np.float32)
        full[: table.shape[0]] = table
        new = _replace(new, (*prefix, "token", "embedding"), _like(old, full))
    if position_LxD is not None:
        old = scope["position"]["embedding"]
        length, width = _old_shape(old)
        table = _table_2d(position_LxD, "position_LxD", width)
        if table.shape[0] < length:
            raise InvalidArgumentError(
                f"max_length={length} is longer than the {table.shape[0]:,} positions of position_LxD; "
                f"use max_length <= {table.shape[0]:,}."
            )
        new = _replace(new, (*prefix, "position", "embedding"), _like(old, table[:length]))
    return new


def init_from_gpt2(
    params: Any,
    *,
    vocab_size: int,
    position: bool = True,
    url: str | None = None,
    cache: Path | None = None,
    tables: tuple[np.ndarray | None, np.ndarray] | None = None,
) -> Any:
    """``params`` with GPT-2 124M's token table and, with ``position``, its first ``L`` positions.

    What a fresh run with ``model.init_from = "gpt2"`` does after ``init``: the one owner of
    which GPT-2 table goes where. The tables come from ``gpt2_tables`` (downloaded once,
    then read from the cache) unless ``tables`` hands over ones already fetched.

    Args:
      params: ``EmbeddingLM`` or ``InputEmbedding`` variables, as ``init`` returns them: a
        token table ``[padded V, 768]`` and, with ``position``, a learned position table
        ``[L, 768]`` with ``L <= 1024``.
      vocab_size: the model's ``vocab_size`` before padding (GPT-2: 50,257); the padding
        rows (``vocab_multiple``) become zero.
      position: also fill the position table with ``wpe[:L]``; ``False`` for a model
        with no learned table (sinusoidal, rotary, ALiBi or no positions), which keeps
        its token table only.
      url: the ``model.safetensors`` to read (see ``gpt2_tables``).
      cache: the cache folder (see ``gpt2_tables``).
      tables: ``(wte_VxD, wpe_PxD)`` as ``gpt2_tables`` returned them (fetched earlier, to
        fail before slow work), or any such pair (a stand-in); then nothing is fetched.

    Returns:
      A new tree (the input is unchanged); each table keeps the old one's box (axis
      names), dtype (``param_dtype``) and sharding.

    Raises:
      PretrainedUnavailableError: the tables are neither cached nor downloadable (one
        line naming the URL and the cache paths; see ``gpt2_tables``).
      InvalidArgumentError: the widths differ (``features`` is not 768), ``vocab_size`` is
        not the table's 50,257 rows, ``L`` exceeds 1,024, or ``position`` is true for
        params with no position table (see ``load_tables``).

    Example (offline: small stand-in tables; ``init_from_gpt2(params, vocab_size=50257)`` fetches GPT-2's):
      >>> from jaxembed.nn.model import EmbeddingLM
      >>> lm = EmbeddingLM(vocab_size=5, max_length=2, features=3, vocab_multiple=8)
      >>> params = lm.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
      >>> wte_VxD = np.arange(15, dtype=np.float32).reshape(5, 3)
      >>> wpe_PxD = np.full((4, 3), 0.5, np.float32)
      >>> new = init_from_gpt2(params, vocab_size=5, tables=(wte_VxD, wpe_PxD))
      >>> embed = nn.unbox(new)["params"]["embed"]
      >>> embed["token"]["embedding"][4].tolist(), embed["position"]["embedding"].shape
      ([12.0, 13.0, 14.0], (2, 3))
    """
    if tables is None:
        tables = gpt2_tables(url=url, cache=cache)
    wte_VxD, wpe_PxD = tables
    if wte_VxD is None:
        raise InvalidArgumentError("init_from_gpt2 needs the token table: tables=(None, wpe) came from positions_only.")
    return load_tables(params, wte_VxD, wpe_PxD if position else None, vocab_size=vocab_size)


def table_init(table: Any, *, first_rows: bool = False) -> Callable[..., jax.Array]:
    """A Flax initializer ``(key, shape, dtype) -> array`` that starts an embedding table from ``table``.

    For ``TokenEmbedding(embedding_init=...)`` and ``PositionalEmbedding(embedding_init=...)``
    (or ``InputEmbedding``'s ``token_init`` / ``position_init``). The key is not used: the
    table is the start. Under ``jit`` (a sharded init) the table becomes a constant of the
    compiled program, which is slow for GPT-2's 154 MB ``wte``: there, ``init`` as usual and
    put the tables in with ``load_tables`` / ``init_from_gpt2``.

    Args:
      table: ``[N, D]`` numeric rows, e.g. GPT-2's ``wte_VxD`` or ``wpe_PxD``.
      first_rows: ``False`` (token tables): ``N`` must be at most the table's rows; the
        rows after ``N`` (the padding of ``vocab_multiple``) are zero. ``True`` (position
        tables): ``N`` must be at least the table's rows ``L``; the first ``L`` are used.

    Returns:
      The initializer; it returns ``table`` in ``dtype`` with the requested ``shape``.

    Raises:
      InvalidTypeError: ``table`` is not a 2-D numeric array (at once).
      InvalidArgumentError: when called, ``shape`` is not 2-D, its width is not ``D``, or
        its rows do not fit ``N`` as ``first_rows`` says.

    Example:
      >>> from jaxembed.nn.embeddings import PositionalEmbedding, TokenEmbedding
      >>> wte_VxD = np.arange(15, dtype=np.float32).reshape(5, 3)
      >>> tok = TokenEmbedding(vocab_size=5, features=3, vocab_multiple=8, embedding_init=table_init(wte_VxD))
      >>> table = tok.init(jax.random.key(0), jnp.array([0]))["params"]["embedding"]
      >>> table.shape, table[4].tolist(), float(abs(table[5:]).sum())
      ((8, 3), [12.0, 13.0, 14.0], 0.0)
      >>> pos = PositionalEmbedding(max_length=2, features=3, embedding_init=table_init(wte_VxD, first_rows=True))
      >>> pos.init(jax.random.key(0), 2)["params"]["embedding"].tolist()
      [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
      >>> table_init(wte_VxD, first_rows=True)(jax.random.key(0), (8, 3))  # what PositionalEmbedding(8, 3) asks
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: table_init: the table has 5 rows, fewer than the 8 asked for (shape [8, 3]).
    """
    array = np.asarray(table)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise InvalidTypeError(f"table must be a 2-D numeric array, got shape {array.shape} and dtype {array.dtype}.")
    rows_N, width = array.shape

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del key  # the table is the start, nothing is drawn
        shape = tuple(shape)
        if len(shape) != 2 or shape[1] != width:
            raise InvalidArgumentError(
                f"table_init: the table is [{rows_N}, {width}] but the parameter is {list(shape)}; "
                f"the widths must match (features={width})."
            )
        rows = shape[0]
        if first_rows:
            if rows_N < rows:
                raise InvalidArgumentError(
                    f"table_init: the table has {rows_N:,} rows, fewer than the {rows:,} asked for (shape {list(shape)})."
                )
            return jnp.asarray(array[:rows], dtype)
        if rows_N > rows:
            raise InvalidArgumentError(
                f"table_init: the table has {rows_N:,} rows, more than the {rows:,} of the parameter "
                f"(shape {list(shape)}); a position table takes its first rows with first_rows=True."
            )
        full = np.zeros(shape, np.float32)
        full[:rows_N] = array  # rows past N: the padding of a padded vocabulary, never looked up
        return jnp.asarray(full, dtype)

    return init


def gpt2_source(url: str | None = None) -> str:
    """The address ``gpt2_tables(url=url)`` reads: ``url``, else ``$JAXEMBED_GPT2_URL``, else ``GPT2_URL``.

    Example:
      >>> gpt2_source("/data/model.safetensors")
      '/data/model.safetensors'
    """
    return url or os.environ.get("JAXEMBED_GPT2_URL") or GPT2_URL


# --- loading into params ---------------------------------------------------------------------


def _old_shape(old: Any) -> tuple[int, int]:
    value = old.value if isinstance(old, nn.meta.AxisMetadata) else old
    rows, width = np.shape(value)
    return int(rows), int(width)


def _table_2d(table: Any, name: str, width: int) -> np.ndarray:
    array = np.asarray(table)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise InvalidTypeError(f"{name} must be a 2-D numeric array, got shape {array.shape} and dtype {array.dtype}.")
    if array.shape[1] != width:
        raise InvalidArgumentError(
            f"{name} is {array.shape[1]:,} wide but the model's {name.split('_')[0]} table is {width} wide "
            f"(features={width}); they must match."
        )
    return array.astype(np.float32, copy=False)


def _like(old: Any, table: np.ndarray) -> Any:
    """``table`` in place of ``old``: the same box (axis names), dtype and sharding."""
    value = old.value if isinstance(old, nn.meta.AxisMetadata) else old
    new = jnp.asarray(table, dtype=value.dtype)
    if isinstance(value, jax.Array):
        new = jax.device_put(new, value.sharding)
    return old.replace_boxed(new) if isinstance(old, nn.meta.AxisMetadata) else new


def _replace(tree: Any, path: tuple[str, ...], leaf: Any) -> Any:
    """A copy of the nested mapping ``tree`` with ``leaf`` at ``path`` (only the dicts on the path are copied)."""
    key, rest = path[0], path[1:]
    value = leaf if not rest else _replace(tree[key], rest, leaf)
    if isinstance(tree, flax.core.FrozenDict):
        return tree.copy({key: value})
    return {**tree, key: value}


# --- the cache --------------------------------------------------------------------------------


def _read_cached(path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    delete = f"delete it and run again to download it afresh: rm {path}"
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys())
            if len(keys) != 1:
                raise PretrainedUnavailableError(
                    f"cached file {path} holds {len(keys)} tensors ({', '.join(keys)}), not one table; {delete}"
                )
            metadata = f.metadata() or {}
            array = f.get_tensor(keys[0])
    except PretrainedUnavailableError:
        raise
    except Exception as e:  # safetensors raises its own error type, or OSError, for a damaged file
        raise PretrainedUnavailableError(
            f"cached file {path} is not a valid safetensors file ({e}); {delete}"
        ) from None
    recorded = metadata.get("sha256")
    if recorded is not None:  # files placed by hand carry no checksum; ours always do
        actual = hashlib.sha256(_le_bytes(array)).hexdigest()
        if actual != recorded:
            raise PretrainedUnavailableError(
                f"cached file {path} is damaged: its tensor's SHA-256 is {actual[:16]}..., "
                f"recorded at download {recorded[:16]}...; {delete}"
            )
    if shape is not None and array.shape != tuple(shape):
        raise PretrainedUnavailableError(
            f"cached file {path} holds a {list(array.shape)} table, not the expected {list(shape)}; {delete}"
        )
    return array.astype(np.float32, copy=False)


def _le_bytes(array: np.ndarray) -> bytes:
    # The file stores little-endian bytes; hash those, whatever this machine's byte order.
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _download(url: str, paths: Mapping[str, Path], shapes: Mapping[str, tuple[int, ...]], timeout: float) -> None:
    names = list(paths)
    try:
        header_length, header = _read_header(url, timeout)
        plan = download_plan(header, header_length=header_length, names=names, url=url)
        for name, byte_range in zip(names, plan.ranges, strict=True):
            if name in shapes and byte_range.shape != tuple(shapes[name]):
                raise PretrainedUnavailableError(
                    f"{url} holds {byte_range.name} as {list(byte_range.shape)}, not the expected "
                    f"{list(shapes[name])}: is it the right model?"
                )
        for name, byte_range in zip(names, plan.ranges, strict=True):
            data = _read_range(url, byte_range.start, byte_range.stop, timeout)
            _write_table(paths[name], byte_range, data, url, header_length)
    except _TransferError as e:
        places = ", ".join(str(paths[name]) for name in names)
        raise PretrainedUnavailableError(
            f"could not download {'+'.join(names)} from {url}: {e}; either place the table(s) by hand at {places} "
            f"(one tensor per file: safetensors.numpy.save_file({{'{names[0]}.weight': array}}, path)), "
            f"or set $JAXEMBED_GPT2_URL (or url=) to a mirror or a local copy of model.safetensors."
        ) from None


def _write_table(path: Path, byte_range: ByteRange, data: bytes, url: str, header_length: int) -> None:
    metadata = {
        "format": _FORMAT,
        "source": url,
        "tensor": byte_range.name,
        "source_header_length": str(header_length),
        "source_range": f"{byte_range.start}-{byte_range.stop}",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    entry = {"dtype": byte_range.dtype, "shape": list(byte_range.shape), "data_offsets": [0, len(data)]}
    header = json.dumps({"__metadata__": metadata, byte_range.name: entry}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors aligns the data to 8 bytes with spaces
    blob = struct.pack("<Q", len(header)) + header + data
    try:
        safetensors.numpy.load(blob)  # the library's own parse: never cache a file it would refuse
    except Exception as e:
        raise _TransferError(f"the bytes of {byte_range.name} do not form a valid tensor ({e})") from None
    with atomic_open(path, "wb") as f:
        f.write(blob)


# --- reading byte ranges ----------------------------------------------------------------------


class _TransferError(Exception):
    """A download failed; the message says why in a few words (the caller adds what to do)."""


def _check_size(size: str) -> None:
    if size not in GPT2_SHAPES:
        raise InvalidArgumentError(f"size={size!r} is not allowed: choose one of {', '.join(map(repr, GPT2_SHAPES))}.")


def _tensor_key(header: Mapping[str, Any], name: str, url: str) -> str:
    for key in (f"{name}.weight", f"transformer.{name}.weight"):
        if key in header:
            return key
    tensors = [k for k in header if k != "__metadata__"]
    shown = ", ".join(tensors[:8]) + (", ..." if len(tensors) > 8 else "")
    raise PretrainedUnavailableError(
        f"{url} has no tensor {name}.weight (nor transformer.{name}.weight); it holds {len(tensors)}: {shown}"
    )


def _read_header(url: str, timeout: float) -> tuple[int, dict[str, Any]]:
    (length,) = struct.unpack("<Q", _read_range(url, 0, 8, timeout))
    if not 2 <= length <= _MAX_HEADER_BYTES:
        raise _TransferError(f"not a safetensors file (its first 8 bytes give a header of {length:,} bytes)")
    try:
        header = json.loads(_read_range(url, 8, 8 + length, timeout))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _TransferError("not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _TransferError("not a safetensors file (its header is not a JSON object)")
    return length, header


def _read_range(url: str, start: int, stop: int, timeout: float) -> bytes:
    """Bytes ``[start, stop)`` of the file at ``url``, complete or ``_TransferError``."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        return _read_local(
            Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)) if scheme == "file" else Path(url), start, stop
        )
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-{stop - 1}", "User-Agent": "jaxembed"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if resp.status == 206:
                _check_content_range(resp.headers.get("Content-Range"), start, stop)
            elif resp.status == 200:
                # The server ignored Range and sends the whole file: skip to the range, read it, hang up.
                _skip(resp, start)
            else:
                raise _TransferError(f"HTTP {resp.status} {resp.reason}")
            return _read_exactly(resp, stop - start, what=f"bytes {start}-{stop - 1}")
    except urllib.error.HTTPError as e:
        raise _TransferError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _TransferError(describe_network_error(e.reason, timeout)) from None
    except (OSError, http.client.HTTPException) as e:
        raise _TransferError(describe_network_error(e, timeout)) from None


def _check_content_range(value: str | None, start: int, stop: int) -> None:
    expected = f"bytes {start}-{stop - 1}/"
    if value is None or not value.startswith(expected):
        raise _TransferError(f"asked for bytes {start}-{stop - 1}, the server sent Content-Range {value!r}")


def _read_exactly(resp: IO[bytes], n: int, *, what: str) -> bytes:
    chunks, got = [], 0
    while got < n:
        try:
            chunk = resp.read(min(_CHUNK, n - got))
        except http.client.IncompleteRead as e:
            chunk = e.partial
            got += len(chunk)
            raise _TransferError(f"connection closed after {got:,} of {n:,} bytes of {what}") from None
        if not chunk:
            raise _TransferError(f"connection closed after {got:,} of {n:,} bytes of {what}")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _skip(resp: IO[bytes], n: int) -> None:
    # Discard, not keep: the range can start hundreds of MB into the file.
    got = 0
    while got < n:
        try:
            chunk = resp.read(min(_CHUNK, n - got))
        except http.client.IncompleteRead as e:
            chunk = b""
            got += len(e.partial)
        if not chunk:
            raise _TransferError(
                f"connection closed after {got:,} bytes, before byte {n:,} (the server ignored Range: it sends the whole file)"
            )
        got += len(chunk)


def _read_local(path: Path, start: int, stop: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(stop - start)
    except OSError as e:
        raise _TransferError(f"cannot read {path} ({e.strerror or e})") from None
    if len(data) != stop - start:
        raise _TransferError(f"{path} ends after {start + len(data):,} bytes, before byte {stop:,}")
    return data
