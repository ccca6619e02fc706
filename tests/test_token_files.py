"""tokens.npy from many files, checked against encoding each document whole with tiktoken."""

import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from jaxembed import data
from jaxembed.text import corpus, streaming, token_files
from jaxembed.text.tokenizer import GPT2_PATTERN, get_encoding

REPO = Path(__file__).resolve().parents[1]
EOT = 50256
GPT2 = get_encoding("gpt2")

# Text that trips naive cutting: whitespace runs before and after newlines,
# Unicode spaces, contractions, digits, multi-byte characters, a literal
# separator, and a long stretch with no ASCII whitespace at all.
TRICKY = [
    "word  \n  \n\tword  \n\n\n   x",
    "trailing spaces   \n",
    "  leading spaces",
    "don't I'll we've 'S 'LL",
    "1234567 89 0.5e10",
    "caf\u00e9 na\u00efve \u00df \u4e2d\u6587 \U0001f600\U0001f600 \u0661\u0662\u0663",
    "nbsp\u00a0here\u3000ideographic\u2028line\u2029para\x85next\x1cfs\x0bvt\x0cff",
    "literal <|endoftext|> inside a file",
    "punct...\n!!!\n)\n:\n",
    "combining e\u0301 marks\u0301\n",
    "tabs\t\t\n\t \n",
]


def tricky_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(TRICKY) + rng.choice(["", " ", "\n", "  ", "\n\n", "\t"]) for _ in range(n))


def reference_tokens(paths, enc=GPT2, eot=EOT):
    """Each file read as jaxembed.text.corpus reads it, encoded whole, then the separator."""
    out = []
    for p in paths:
        out += enc.encode_ordinary(corpus.load_text(p, strip=True)) + [eot]
    return np.array(out)


@pytest.fixture(scope="module")
def paragraphs(corpus_path):
    body = corpus.strip_gutenberg(corpus.load_text(corpus_path))
    return [p for p in body.split("\n\n") if p.strip()]


@pytest.fixture
def small_pieces(monkeypatch):
    # Tiny reads and pieces: thousands of cuts and of multi-byte characters split across reads.
    monkeypatch.setattr(streaming, "READ_BYTES", 777)
    monkeypatch.setattr(streaming, "PIECE_CHARS", 2000)


def write_corpus(root: Path, paragraphs, corpus_path, seed=0) -> list[Path]:
    """~0.8 MB: shuffled Romeo and Juliet paragraphs, tricky text, the Gutenberg file as is, CRLF and BOM."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(4):
        paras = rng.sample(paragraphs, len(paragraphs) // 3)
        text = "\n\n".join(paras) + rng.choice(["", "\n", "  \n", "\n\n  "])
        paths.append(root / f"shuffled_{i}.txt")
        paths[-1].write_text(text, encoding="utf-8")
    paths.append(root / "tricky.txt")
    paths[-1].write_text(tricky_text(rng, 3000), encoding="utf-8")
    paths.append(root / "no_ascii_space.txt")  # 6000 chars with no safe cut: one growing piece
    paths[-1].write_text("\u4e2d\u6587" * 3000 + "\nend", encoding="utf-8")
    paths.append(root / "gutenberg.txt")
    paths[-1].write_bytes(corpus_path.read_bytes())
    paths.append(root / "sub" / "crlf_bom.txt")
    paths[-1].parent.mkdir(exist_ok=True)
    crlf = "\n\n".join(rng.sample(paragraphs, 200)).replace("\n", "\r\n")  # thousands of CRLFs straddle reads
    paths[-1].write_bytes(b"\xef\xbb\xbf" + crlf.encode() + b"\r\nlone\rCR\r")
    return sorted(paths)


# --- Safe boundaries ------------------------------------------------------------------------


def encodings():
    ranks = GPT2._mergeable_ranks
    yield "gpt2", GPT2
    for name, pattern in [("cl100k", streaming.CL100K_PATTERN), ("o200k", streaming.O200K_PATTERN)]:
        # The regex decides where cuts are safe; GPT-2's ranks stand in for the (networked) real ones.
        yield (
            name,
            tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT}),
        )


@pytest.mark.parametrize("name, enc", list(encodings()))
def test_every_safe_boundary_keeps_the_tokens_of_the_whole_text(name, enc):
    rule = streaming.boundary_rule(enc)
    assert rule is not None and rule.name == name
    alphabet = [t[i : i + 3] for t in TRICKY for i in range(0, len(t), 3)] + [" ", "\n", "  ", "\n\n", "\t", "\r"]
    rng = random.Random(1)
    safe = unsafe_differs = 0
    for _ in range(600):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        whole = enc.encode_ordinary(text)
        for p in range(1, len(text)):
            split = enc.encode_ordinary(text[:p]) + enc.encode_ordinary(text[p:])
            if rule.last_boundary(text[: p + 1], p) == p:
                safe += 1
                assert split == whole, (text, p)
            else:
                unsafe_differs += split != whole
    assert safe > 2000
    assert unsafe_differs > 2000  # the texts are hard: cutting anywhere else often changes tokens


def test_pieces_of_real_text_encode_like_the_whole(small_pieces, corpus_path):
    src = streaming.scan(corpus_path)
    pieces = list(streaming.document_pieces(src, streaming.boundary_rule(GPT2)))
    assert len(pieces) > 50
    body = corpus.load_text(corpus_path, strip=True)
    assert "".join(pieces) == body
    assert [t for p in pieces for t in GPT2.encode_ordinary(p)] == GPT2.encode_ordinary(body)


# --- tokens.npy against per-document encoding -----------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_tokens_equal_each_document_encoded_whole(tmp_path, paragraphs, corpus_path, small_pieces, workers):
    paths = write_corpus(tmp_path / "in", paragraphs, corpus_path)
    meta = token_files.tokenize_files([tmp_path / "in"], tmp_path / "out", workers=workers)
    tokens, meta2 = token_files.open_tokens(tmp_path / "out", verify=True)
    assert meta2 == meta
    want = reference_tokens(paths)
    assert tokens.dtype == np.uint16 and meta["dtype"] == "uint16"
    np.testing.assert_array_equal(tokens, want)
    assert meta["num_tokens"] == len(want) and meta["num_documents"] == len(paths)
    assert meta["tokenizer"] == "gpt2" and meta["n_vocab"] == 50257 and meta["separator_id"] == EOT
    assert meta["tokens_sha256"] == hashlib.sha256((tmp_path / "out/tokens.npy").read_bytes()).hexdigest()
    ends = np.flatnonzero(want == EOT)  # no document holds the separator id itself
    for doc, path, end in zip(meta["documents"], paths, ends):
        assert doc["path"] == str(path)
        assert doc["bytes"] == path.stat().st_size
        assert doc["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert doc["stop"] == end
        assert GPT2.decode(tokens[doc["start"] : doc["stop"]].tolist()) == corpus.load_text(path, strip=True)
    assert [d["gutenberg_stripped"] for d in meta["documents"]] == [p.name == "gutenberg.txt" for p in paths]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name not in ("tokens.npy", "meta.json")]


def test_default_pieces_with_a_progress_bar(tmp_path, paragraphs, corpus_path, capsys):
    paths = write_corpus(tmp_path / "in", paragraphs, corpus_path, seed=2)
    token_files.tokenize_files(paths, tmp_path / "out", progress=True)
    assert "tokenizing: 100%" in capsys.readouterr().err
    tokens, _ = token_files.open_tokens(tmp_path / "out")
    np.testing.assert_array_equal(tokens, reference_tokens(paths))


def test_wide_vocabulary_is_stored_as_uint32(tmp_path, small_pieces):
    wide = tiktoken.Encoding(
        name="gpt2-wide",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=GPT2._mergeable_ranks,
        special_tokens={"<|endoftext|>": 70000},
    )
    (tmp_path / "a.txt").write_text(tricky_text(random.Random(3), 500))
    (tmp_path / "b.txt").write_text("short")
    meta = token_files.tokenize_files([tmp_path], tmp_path / "out", tokenizer=wide)
    tokens, _ = token_files.open_tokens(tmp_path / "out")
    assert tokens.dtype == np.uint32 and meta["n_vocab"] == 70001 and meta["separator_id"] == 70000
    np.testing.assert_array_equal(tokens, reference_tokens([tmp_path / "a.txt", tmp_path / "b.txt"], wide, 70000))
    with pytest.raises(ValueError, match=r"text_or_ids\[\d+\]=70000 is outside tokenizer='gpt2'"):
        data.as_token_ids(tokens)


def test_unknown_regex_encodes_whole_documents(tmp_path, small_pieces):
    odd = tiktoken.Encoding(
        name="odd", pat_str=r"\S+|\s+", mergeable_ranks=GPT2._mergeable_ranks, special_tokens={"<|endoftext|>": EOT}
    )
    assert streaming.boundary_rule(odd) is None
    (tmp_path / "a.txt").write_text(tricky_text(random.Random(4), 800))
    token_files.tokenize_files([tmp_path / "a.txt"], tmp_path / "out", tokenizer=odd)
    tokens, _ = token_files.open_tokens(tmp_path / "out")
    np.testing.assert_array_equal(tokens, reference_tokens([tmp_path / "a.txt"], odd))


# --- Inputs: directories, globs, Gutenberg ----------------------------------------------------


def test_directories_and_globs_give_sorted_unique_documents(tmp_path):
    files = ["in/b/2.txt", "in/b/10.txt", "in/a.txt", "in/a-c/x.txt", "in/skip.md", "other/z.txt"]
    for i, name in enumerate(files):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"document {i} is {name}\n")
    inputs = [tmp_path / "other/z.txt", str(tmp_path / "in"), str(tmp_path / "in/b/*.txt"), tmp_path / "in/a.txt"]
    meta = token_files.tokenize_files(inputs, tmp_path / "out")
    order = ["in/a-c/x.txt", "in/a.txt", "in/b/10.txt", "in/b/2.txt", "other/z.txt"]  # path components, not strings
    assert [d["path"] for d in meta["documents"]] == [str(tmp_path / n) for n in order]
    tokens, _ = token_files.open_tokens(tmp_path / "out")
    np.testing.assert_array_equal(tokens, reference_tokens([tmp_path / n for n in order]))
    md = token_files.tokenize_files([tmp_path / "in"], tmp_path / "md", glob="*.md")
    assert [d["path"] for d in md["documents"]] == [str(tmp_path / "in/skip.md")]
    rec = token_files.tokenize_files([str(tmp_path / "**" / "1*.txt")], tmp_path / "rec")
    assert [d["path"] for d in rec["documents"]] == [str(tmp_path / "in/b/10.txt")]


def test_gutenberg_header_and_licence_are_stripped_per_file(tmp_path, corpus_path, monkeypatch):
    monkeypatch.setattr(streaming, "READ_BYTES", 5)  # markers straddle reads
    # A synthetic book: only the marker lines are Gutenberg's (spelled in pieces, so no tracked file holds them whole).
    marker = "PROJECT " + "GUTENBERG EBOOK X ***"
    book = f"Title page\n*** START OF THE {marker}\n\nBody line.\n  \n*** END OF THE {marker}\nlicence\n"
    texts = {
        "1_book.txt": book,
        "2_plain.txt": "No markers here.\n*** END OF nothing\n",
        "3_start_only.txt": "*** START OF IT ***\nbody without an end\n",
        "4_crlf.txt": book.replace("\n", "\r\n"),
        "5_no_space.txt": "x\n***START OF A\nb\n***END OF A\ny\n",
        "6_end_before_start.txt": "*** END OF old\n*** START OF new\nkept\n*** END OF new\ngone\n",
    }
    for name, text in texts.items():
        (tmp_path / name).write_bytes(text.encode())
    (tmp_path / "7_real.txt").write_bytes(corpus_path.read_bytes())
    paths = sorted(tmp_path.glob("*.txt"))
    meta = token_files.tokenize_files([tmp_path], tmp_path / "out")
    tokens, _ = token_files.open_tokens(tmp_path / "out")
    np.testing.assert_array_equal(tokens, reference_tokens(paths))
    flags = [d["gutenberg_stripped"] for d in meta["documents"]]
    assert flags == [corpus.has_gutenberg_markers(corpus.load_text(p)) for p in paths]
    assert flags == [True, False, False, True, True, True, True]
    first = meta["documents"][0]
    assert GPT2.decode(tokens[first["start"] : first["stop"]].tolist()) == "\nBody line.\n  \n"


# --- The data pipeline reads the map in place --------------------------------------------------


def test_memmap_flows_through_the_data_pipeline_without_copies(tmp_path, paragraphs, corpus_path):
    paths = write_corpus(tmp_path / "in", paragraphs, corpus_path)
    token_files.tokenize_files(paths, tmp_path / "out")
    tokens, _ = token_files.open_tokens(tmp_path / "out")
    in_memory = np.asarray(tokens, dtype=np.int32).copy()
    assert np.shares_memory(data.as_token_ids(tokens), tokens)
    windows = data.StridedWindows(data.as_token_ids(tokens), max_length=32, stride=16)
    assert np.shares_memory(windows.ids, tokens)
    x, y = windows.gather(np.array([5, 0, 77]))
    assert x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(x, np.stack([in_memory[s : s + 32] for s in (80, 0, 1232)]))
    np.testing.assert_array_equal(windows[3][1], in_memory[49:81])

    kwargs = dict(batch_size=8, max_length=32, stride=16, shuffle=True, seed=3, shard_index=0, shard_count=1)
    got = list(data.create_dataloader(tokens, **kwargs))
    want = list(data.create_dataloader(in_memory, **kwargs))
    assert len(got) == len(want) > 100
    for (gx, gy), (wx, wy) in zip(got, want):
        assert gx.dtype == gy.dtype == np.int32
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)


def test_pickled_windows_map_the_file_again(tmp_path):
    (tmp_path / "a.txt").write_text(tricky_text(random.Random(5), 400))
    token_files.tokenize_files([tmp_path], tmp_path / "out")
    tokens, _ = token_files.open_tokens(tmp_path / "out")
    for ids in (tokens, tokens[1001:], np.asarray(tokens)[7:]):  # slices too: offsets must follow
        windows = data.StridedWindows(ids, max_length=8, stride=3)
        blob = pickle.dumps(windows)
        assert len(blob) < 2000  # the file name, not the tokens
        back = pickle.loads(blob)
        assert isinstance(back.ids, np.memmap) and Path(back.ids.filename) == tmp_path / "out/tokens.npy"
        idx = np.arange(len(windows))
        for a, b in zip(back.gather(idx), windows.gather(idx)):
            np.testing.assert_array_equal(a, b)
    in_memory = data.StridedWindows(np.arange(50, dtype=np.int32), max_length=4, stride=4)
    assert pickle.loads(pickle.dumps(in_memory)).ids.tolist() == list(range(50))


# --- Atomic writes --------------------------------------------------------------------------


def test_leftovers_of_a_killed_run_are_never_taken_for_a_result(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.txt").write_text("Hello world\n")
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / ".tokens.npy.x1.part", np.arange(3, dtype=np.uint16))  # a complete-looking temp file
    (out / ".meta.json.x1.part").write_text('{"num_tokens": 3}')
    with pytest.raises(ValueError, match="meta.json is missing"):
        token_files.open_tokens(out)
    token_files.tokenize_files([tmp_path / "in"], out)
    tokens, _ = token_files.open_tokens(out, verify=True)
    assert tokens.tolist() == reference_tokens([tmp_path / "in/a.txt"]).tolist()

    # Killed between the two renames: tokens.npy without meta.json.
    (out / "meta.json").unlink()
    with pytest.raises(ValueError, match="interrupted run"):
        token_files.open_tokens(out)
    with pytest.raises(ValueError, match="not a complete token corpus.*overwrite=True"):
        token_files.tokenize_files([tmp_path / "in"], out)
    token_files.tokenize_files([tmp_path / "in"], out, overwrite=True)
    assert token_files.open_tokens(out, verify=True)[0].tolist() == tokens.tolist()


def test_a_run_killed_mid_write_leaves_the_previous_result_intact(tmp_path, paragraphs):
    out = tmp_path / "out"
    (tmp_path / "old").mkdir()
    (tmp_path / "old/a.txt").write_text("the old corpus\n")
    old_meta = token_files.tokenize_files([tmp_path / "old"], out)
    big = tmp_path / "big"
    big.mkdir()
    rng = random.Random(6)
    for i in range(3):
        (big / f"{i}.txt").write_text("\n\n".join(rng.choices(paragraphs, k=6000)))  # ~3 MB in all
    code = f"from jaxembed.text.token_files import tokenize_files; tokenize_files([{str(big)!r}], {str(out)!r}, workers=1, overwrite=True)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".tokens.raw.*.part")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)  # mid-tokenization, as a crash or `kill -9` would
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list(out.glob(".tokens.raw.*.part"))  # the killed run's leftover
    tokens, meta = token_files.open_tokens(out, verify=True)
    assert meta == old_meta and GPT2.decode(tokens.tolist()) == "the old corpus\n<|endoftext|>"


def test_old_meta_never_describes_new_tokens(tmp_path, monkeypatch):
    for name, text in [("a/1.txt", "old words"), ("b/1.txt", "new words")]:  # the same length in tokens
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    out = tmp_path / "out"
    token_files.tokenize_files([tmp_path / "a"], out)
    real_replace = os.replace

    def crash_before_meta(src, dst):
        # A kill between renaming tokens.npy and meta.json, made deterministic.
        if Path(dst).name == "meta.json":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(token_files.os, "replace", crash_before_meta)
    with pytest.raises(KeyboardInterrupt):
        token_files.tokenize_files([tmp_path / "b"], out, overwrite=True)
    monkeypatch.setattr(token_files.os, "replace", real_replace)
    assert sorted(p.name for p in out.iterdir()) == ["tokens.npy"]  # temps removed, no meta.json
    with pytest.raises(ValueError, match="meta.json is missing .*interrupted run"):
        token_files.open_tokens(out)


# --- Bad input ------------------------------------------------------------------------------


def test_inputs_that_match_nothing(tmp_path):
    (tmp_path / "notes.md").write_text("text")
    with pytest.raises(ValueError, match=r"input '.*nowhere' does not exist"):
        token_files.tokenize_files([tmp_path / "nowhere"], tmp_path / "out")
    with pytest.raises(ValueError, match=rf"input '{tmp_path}' matches no files .*glob='\*\.txt'"):
        token_files.tokenize_files([tmp_path], tmp_path / "out")
    with pytest.raises(ValueError, match=r"input '.*/\*\.rst' matches no files"):
        token_files.tokenize_files([str(tmp_path / "*.rst")], tmp_path / "out")
    with pytest.raises(ValueError, match=r"inputs=\[\] is not allowed"):
        token_files.tokenize_files([], tmp_path / "out")
    with pytest.raises(ValueError, match=r"glob='' is not allowed"):
        token_files.tokenize_files([tmp_path], tmp_path / "out", glob="")
    with pytest.raises(TypeError, match="inputs must hold paths.*int: 3"):
        token_files.tokenize_files([3], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b" \n\t\r\n", "is empty"),
        (b"*** START OF X\n \n\n*** END OF X\nlicence", "empty Project Gutenberg body"),
    ],
)
def test_empty_documents(tmp_path, content, message):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "bad.txt").write_bytes(content)
    with pytest.raises(ValueError, match=f"{message}.*bad.txt"):
        token_files.tokenize_files([tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("prefix, tail", [(b"a" * 5000, b"\xff rest"), (b"x\xe2\x82\xac" * 900, b"\xe2\x82")])
def test_non_utf8_names_the_file_and_byte_offset(tmp_path, monkeypatch, prefix, tail):
    monkeypatch.setattr(streaming, "READ_BYTES", 777)  # the bad byte lies past several reads
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(prefix + tail)
    with pytest.raises(UnicodeDecodeError) as reference:
        (prefix + tail).decode("utf-8")
    offset = reference.value.start
    with pytest.raises(ValueError, match=rf"not UTF-8: {bad}: byte 0x{tail[0]:02x} at offset {offset}$"):
        token_files.tokenize_files([bad], tmp_path / "out")


def test_out_dir_with_another_corpus_needs_overwrite(tmp_path):
    for name, text in [("a/1.txt", "first corpus"), ("b/1.txt", "second corpus"), ("c/1.txt", "first corpus")]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    out = tmp_path / "out"
    first = token_files.tokenize_files([tmp_path / "a"], out)
    stamp = (out / "tokens.npy").stat().st_mtime_ns, (out / "meta.json").stat().st_mtime_ns
    # The same contents again (even from another path) is a no-op.
    assert token_files.tokenize_files([tmp_path / "a"], out) == first
    assert token_files.tokenize_files([tmp_path / "c"], out) == first
    assert ((out / "tokens.npy").stat().st_mtime_ns, (out / "meta.json").stat().st_mtime_ns) == stamp
    with pytest.raises(
        ValueError, match=r"already holds a different token corpus \(document 0: .*a/1.txt.*b/1.txt.*overwrite=True"
    ):
        token_files.tokenize_files([tmp_path / "b"], out)
    assert token_files.open_tokens(out, verify=True)[1] == first
    second = token_files.tokenize_files([tmp_path / "b"], out, overwrite=True)
    tokens, meta = token_files.open_tokens(out, verify=True)
    assert meta == second and GPT2.decode(tokens.tolist()) == "second corpus<|endoftext|>"
    # A damaged copy of the same corpus is rebuilt rather than trusted.
    with open(out / "tokens.npy", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00")
    assert token_files.tokenize_files([tmp_path / "b"], out)["tokens_sha256"] == second["tokens_sha256"]
    token_files.open_tokens(out, verify=True)


def test_bad_tokenizer_workers_and_out_dir(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(ValueError, match="tokenizer='gpt5' is not supported"):
        token_files.tokenize_files([tmp_path], tmp_path / "out", tokenizer="gpt5")
    no_eot = tiktoken.Encoding(
        name="no-eot", pat_str=GPT2_PATTERN, mergeable_ranks=GPT2._mergeable_ranks, special_tokens={}
    )
    with pytest.raises(ValueError, match=r"tokenizer='no-eot' has no <\|endoftext\|>"):
        token_files.tokenize_files([tmp_path], tmp_path / "out", tokenizer=no_eot)
    with pytest.raises(ValueError, match=r"tokenizer='huge' has n_vocab=4294967297.*do not fit uint32"):
        token_files._token_dtype(2**32 + 1, "huge")
    assert token_files._token_dtype(2**16, "x") == np.uint16 and token_files._token_dtype(2**16 + 1, "x") == np.uint32
    for workers in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"workers={workers!r} is not allowed"):
            token_files.tokenize_files([tmp_path], tmp_path / "out", workers=workers)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="out_dir=.*file' exists and is not a directory"):
        token_files.tokenize_files([tmp_path / "a.txt"], tmp_path / "file")


def test_open_tokens_rejects_missing_and_corrupt_directories(tmp_path):
    with pytest.raises(ValueError, match="token directory .*nowhere' does not exist"):
        token_files.open_tokens(tmp_path / "nowhere")
    (tmp_path / "a.txt").write_text("one two three four")
    out = tmp_path / "out"
    token_files.tokenize_files([tmp_path / "a.txt"], out)
    good_meta, good_tokens = (out / "meta.json").read_text(), (out / "tokens.npy").read_bytes()

    def damaged(meta=None, tokens=None, message="", verify=False):
        (out / "meta.json").write_text(good_meta if meta is None else meta)
        (out / "tokens.npy").write_bytes(good_tokens if tokens is None else tokens)
        with pytest.raises(ValueError, match=message):
            token_files.open_tokens(out, verify=verify)

    meta = json.loads(good_meta)
    damaged(meta="{not json", message="not a valid token meta file")
    damaged(
        meta=json.dumps({**meta, "num_tokens": 99}), message=r"shape \(5,\), but meta.json says uint16 of shape \(99,\)"
    )
    damaged(meta=json.dumps({**meta, "dtype": "uint32"}), message="holds uint16 .* says uint32")
    damaged(meta=json.dumps({**meta, "dtype": "float32"}), message="dtype='float32'; allowed")
    damaged(meta=json.dumps({**meta, "format_version": 0}), message="format_version=0")
    damaged(tokens=good_tokens[:-3], message="not a readable .npy file")
    flipped = good_tokens[:-2] + b"\x01\x00"  # the final separator becomes token 1
    damaged(tokens=flipped, message="no separator id 50256")
    other = good_tokens[:-4] + b"\x02\x00" + good_tokens[-2:]
    damaged(tokens=other, message="does not match the SHA-256", verify=True)
    (out / "tokens.npy").unlink()
    with pytest.raises(ValueError, match="tokens.npy is missing"):
        token_files.open_tokens(out)


def test_written_files_follow_the_umask(tmp_path):
    # Like every file jaxembed writes: readable by others under the usual 022 umask (mkstemp would give 0600).
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("Two households, both alike in dignity.\n")
    previous = os.umask(0o022)
    try:
        token_files.tokenize_files([tmp_path / "in"], tmp_path / "tok")
    finally:
        os.umask(previous)
    for name in ("tokens.npy", "meta.json"):
        assert (tmp_path / "tok" / name).stat().st_mode & 0o777 == 0o644, name
