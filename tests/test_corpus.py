"""Tests for jaxembed.text.corpus: real files, a real local HTTP server, no mocks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import platformdirs
import pytest

from jaxembed.text.corpus import (
    CORPORA,
    CorpusUnavailableError,
    cache_dir,
    cached_path,
    has_gutenberg_markers,
    load_text,
    strip_gutenberg,
)

Respond = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache dir, so the real user cache is never touched."""
    monkeypatch.setenv("JAXEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXEMBED_CORPUS", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def serve() -> Iterator[Callable[[Respond], tuple[str, list[str]]]]:
    """Start 127.0.0.1 servers answering GET with `respond`; returns (url, request log)."""
    servers: list[ThreadingHTTPServer] = []

    def start(respond: Respond) -> tuple[str, list[str]]:
        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                respond(self)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/pg1513.txt", hits

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def send(handler: BaseHTTPRequestHandler, body: bytes, length: int | None = None) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def refused_url() -> Iterator[str]:
    # A port held bound but not listening: connecting is refused, and no other process can
    # take the port while the test runs (a port merely "just free" could be taken).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/pg1513.txt"


def cache_files(folder: Path) -> list[str]:
    """Names in the cache folder other than the build locks (which hold no data)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def assert_clear_error(err: CorpusUnavailableError, url: str, reason: str) -> None:
    msg = str(err)
    for needed in (url, reason, str(cached_path("romeo-juliet")), "--text", "$JAXEMBED_CORPUS"):
        assert needed in msg
    assert "--corpus python-docs" in msg
    assert err.__cause__ is None and err.__suppress_context__  # raised `from None`


def test_corpora_names() -> None:
    assert CORPORA == ("romeo-juliet", "python-docs")
    with pytest.raises(ValueError, match="unknown corpus"):
        cached_path("shakespeare")


def test_cache_dir_env_and_default(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir() == isolated_cache
    assert cached_path("romeo-juliet") == isolated_cache / "romeo-juliet.txt"
    major, minor = sys.version_info[:2]
    assert cached_path("python-docs").name == f"python-docs-{major}.{minor}.txt"
    monkeypatch.delenv("JAXEMBED_CACHE")
    assert cache_dir() == Path(platformdirs.user_cache_dir("jaxembed"))


def test_download_then_read_from_cache(serve, corpus_path: Path, isolated_cache: Path) -> None:
    raw = corpus_path.read_bytes()
    url, hits = serve(lambda h: send(h, raw))

    text = load_text("romeo-juliet", url=url, timeout=5)
    assert text == corpus_path.read_text(encoding="utf-8")
    assert cached_path("romeo-juliet").read_bytes() == raw
    assert cache_files(isolated_cache) == ["romeo-juliet.txt"]  # no .part
    assert hits == ["/pg1513.txt"]

    assert load_text("romeo-juliet", url=url, timeout=5) == text
    assert load_text(url=url, strip=True) == strip_gutenberg(text)
    assert len(hits) == 1  # served from the cache afterwards


def test_http_404_is_a_clear_error(serve, isolated_cache: Path) -> None:
    url, _ = serve(lambda h: h.send_error(404))
    with pytest.raises(CorpusUnavailableError) as info:
        load_text("romeo-juliet", url=url, timeout=5)
    assert_clear_error(info.value, url, "HTTP 404")
    assert not cached_path("romeo-juliet").exists()


def test_refused_connection_is_a_clear_error(refused_url: str) -> None:
    url = refused_url
    with pytest.raises(CorpusUnavailableError) as info:
        load_text("romeo-juliet", url=url, timeout=5)
    assert_clear_error(info.value, url, "connection refused")


@pytest.mark.parametrize("stall", ["before-headers", "mid-body"])
def test_stalling_server_times_out_fast(serve, corpus_path: Path, stall: str) -> None:
    release = threading.Event()  # lets the stalled handler finish at once afterwards
    raw = corpus_path.read_bytes()

    def respond(h: BaseHTTPRequestHandler) -> None:
        if stall == "mid-body":
            send(h, raw[:1000], length=len(raw))
            h.wfile.flush()
        release.wait(3.0)

    url, _ = serve(respond)
    start = time.monotonic()
    try:
        with pytest.raises(CorpusUnavailableError) as info:
            load_text("romeo-juliet", url=url, timeout=0.5)
    finally:
        release.set()
    assert time.monotonic() - start < 2.5
    assert_clear_error(info.value, url, "timed out after 0.5 s")
    assert not cached_path("romeo-juliet").exists()


def test_truncated_download_leaves_no_cache_file(serve, corpus_path: Path, isolated_cache: Path) -> None:
    raw = corpus_path.read_bytes()
    url, _ = serve(lambda h: send(h, raw, length=len(raw) + 1000))  # then the server closes
    with pytest.raises(CorpusUnavailableError) as info:
        load_text("romeo-juliet", url=url, timeout=5)
    assert_clear_error(info.value, url, f"connection closed after {len(raw)} of {len(raw) + 1000} bytes")
    assert not isolated_cache.exists() or cache_files(isolated_cache) == []


def test_env_corpus_overrides_download(corpus_path: Path, monkeypatch: pytest.MonkeyPatch, refused_url: str) -> None:
    monkeypatch.setenv("JAXEMBED_CORPUS", str(corpus_path))
    # The URL refuses connections, so passing proves the network was not used.
    assert load_text("romeo-juliet", url=refused_url) == corpus_path.read_text(encoding="utf-8")
    assert not cached_path("romeo-juliet").exists()

    missing = corpus_path.parent / "no-such-file.txt"
    monkeypatch.setenv("JAXEMBED_CORPUS", str(missing))
    with pytest.raises(FileNotFoundError, match=r"\$JAXEMBED_CORPUS") as info:
        load_text()
    assert str(missing) in str(info.value)


def test_strip_gutenberg_matches_plain_find(corpus_path: Path) -> None:
    text = corpus_path.read_text(encoding="utf-8")
    start_line, end_line = text.find("*** START OF"), text.find("*** END OF")
    assert 800 < start_line < 900 and 143_000 < end_line < 144_000 < len(text)
    body = text[text.index("\n", start_line) + 1 : end_line]

    assert has_gutenberg_markers(text)
    assert strip_gutenberg(text) == body
    assert "ROMEO" in body and "Gutenberg" not in body[:200]
    assert load_text(corpus_path, strip=True) == body
    # Without the markers there is nothing to strip.
    assert not has_gutenberg_markers(body)
    assert strip_gutenberg(body) == body
    assert strip_gutenberg("no markers *** START OF mid-line\n") == "no markers *** START OF mid-line\n"


def test_python_docs_deterministic_sized_and_cached(isolated_cache: Path, tmp_path: Path) -> None:
    # A second, concurrent build in a fresh interpreter with another hash seed:
    # catches any order that depends on set/dict hashing or on process state.
    other_cache = tmp_path / "other-cache"
    env = {**os.environ, "JAXEMBED_CACHE": str(other_cache), "PYTHONHASHSEED": "12345"}
    child = subprocess.Popen(
        [sys.executable, "-c", "from jaxembed.text.corpus import load_text; load_text('python-docs')"],
        env=env,
    )
    try:
        text = load_text("python-docs")
    finally:
        assert child.wait(timeout=60) == 0
    path = cached_path("python-docs")
    assert path.read_bytes() == (other_cache / path.name).read_bytes()
    assert path.read_text(encoding="utf-8") == text

    assert len(text) > 1_000_000
    assert "JSON (JavaScript Object Notation)" in text  # json's module docstring

    # A later call reads the cache instead of rebuilding.
    path.write_text("cached sentinel\n", encoding="utf-8")
    assert load_text("python-docs") == "cached sentinel\n"


def test_paths_and_pathlike(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"\xef\xbb\xbfTo be, or not to be\r\nthat is the question\n")
    expected = "To be, or not to be\nthat is the question\n"  # BOM and CRLF gone
    assert load_text(path) == expected
    assert load_text(str(path)) == expected


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "romeo_juliet.txt"
    with pytest.raises(FileNotFoundError, match="not found") as info:
        load_text(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="romeo-juliet, python-docs"):
        load_text("romeo_juliet")  # a typo of a corpus name is treated as a path


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="directory") as info:
        load_text(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(("data", "offset"), [(b"abc\xffdef", 3), (b"\xef\xbb\xbfab\xc3(", 5)])
def test_not_utf8_names_byte_offset(tmp_path: Path, data: bytes, offset: int) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"not UTF-8.*offset {offset}") as info:
        load_text(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("data", [b"", b" \n\t\r\n", b"\xef\xbb\xbf"])
def test_empty_or_blank_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="empty") as info:
        load_text(path)
    assert str(path) in str(info.value)


# --- python-docs from many threads and processes (CPython 3.11's shared AST counter) ----------


def _parse_python_in_a_loop(stop: threading.Event, failures: list[BaseException]) -> None:
    # Other code in the same process parsing Python, without jaxembed's lock.
    import ast
    import inspect

    source = inspect.getsource(threading)
    while not stop.is_set():
        try:
            ast.parse(source)
        except SystemError as e:  # the foreign thread may itself lose the race; jaxembed must not
            failures.append(e)


def test_python_docs_first_calls_from_racing_threads_build_once(
    isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four first calls at once, and another thread parsing all the while: one build, no SystemError
    # escapes, and the text is the one built with no other thread about.
    import jaxembed.text.corpus as corpus_module

    reference = corpus_module.python_docs_text()
    builds: list[int] = []
    real_build = corpus_module.python_docs_text

    def counting_build() -> str:
        builds.append(threading.get_ident())
        return real_build()

    monkeypatch.setattr(corpus_module, "python_docs_text", counting_build)
    stop, foreign_failures = threading.Event(), []
    parser = threading.Thread(target=_parse_python_in_a_loop, args=(stop, foreign_failures), daemon=True)
    parser.start()
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def first_call() -> None:
        barrier.wait()
        try:
            results.append(load_text("python-docs"))
        except BaseException as e:  # noqa: BLE001 -- reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=first_call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    parser.join(timeout=30)
    assert not errors, errors
    assert len(builds) == 1, f"built {len(builds)} times"
    assert results == [reference] * 4
    assert cached_path("python-docs").read_text(encoding="utf-8") == reference
    assert not [p.name for p in isolated_cache.iterdir() if p.name.endswith(".tmp")]


def test_python_docs_two_processes_at_once_give_one_complete_file(isolated_cache: Path) -> None:
    code = (
        "from jaxembed.text.corpus import load_text; import sys; sys.stdout.write(str(len(load_text('python-docs'))))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    text = cached_path("python-docs").read_text(encoding="utf-8")
    assert outs == [str(len(text))] * 2
    assert not [p.name for p in isolated_cache.iterdir() if p.name.endswith(".tmp")]
