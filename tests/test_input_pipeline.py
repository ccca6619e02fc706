"""Training data from token directories and text directories, checked against plain numpy/tiktoken.

References: each document read as ``jaxembed.text.corpus.load_text(strip=True)`` reads it, encoded whole by
tiktoken, then ``<|endoftext|>``; splits, windows and counts recomputed with plain numpy slicing.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from run_files import metrics_rows

from jaxembed import cli, data
from jaxembed.config import base_config
from jaxembed.data import pipeline, splits
from jaxembed.text import corpus, token_files
from jaxembed.text.tokenizer import get_encoding
from jaxembed.train.trainer import make_mesh

GPT2 = get_encoding("gpt2")
EOT = 50256


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory, corpus_path) -> Path:
    """Three documents of Romeo and Juliet paragraphs; one keeps a Gutenberg header and licence."""
    root = tmp_path_factory.mktemp("texts")
    raw = corpus.load_text(corpus_path)
    paragraphs = [p for p in corpus.strip_gutenberg(raw).split("\n\n") if p.strip()]
    (root / "b.txt").write_text("\n\n".join(paragraphs[100:160]), encoding="utf-8")
    (root / "a.txt").write_text("\n\n".join(paragraphs[10:70]), encoding="utf-8")
    start, end = raw.index("*** START OF"), raw.index("*** END OF")
    gutenberg = raw[: raw.index("\n", start) + 1] + "\n\n".join(paragraphs[200:240]) + "\n" + raw[end:]
    (root / "sub").mkdir()
    (root / "sub" / "c.txt").write_text(gutenberg, encoding="utf-8")
    (root / "notes.md").write_text("not a .txt file", encoding="utf-8")
    return root


def reference_ids(paths) -> np.ndarray:
    out = []
    for p in paths:
        out += GPT2.encode_ordinary(corpus.load_text(p, strip=True)) + [EOT]
    return np.array(out, dtype=np.int64)


@pytest.fixture(scope="module")
def ref(text_dir) -> np.ndarray:
    return reference_ids([text_dir / "a.txt", text_dir / "b.txt", text_dir / "sub" / "c.txt"])


@pytest.fixture(scope="module")
def tok_dir(text_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tok"
    token_files.tokenize_files([text_dir], out)
    return out


def small_config(**data):
    config = base_config()
    config.data.max_length, config.data.stride, config.data.batch_size = 8, 8, 4
    config.train.eval_batches = 3
    for key, value in data.items():
        config.data[key] = value
    return config


def root_map(ids: np.ndarray) -> np.memmap:
    while not (isinstance(ids, np.memmap) and ids.base is not None and not isinstance(ids.base, np.ndarray)):
        ids = ids.base
    return ids


# --- Token directories: slices of the map, batches as from int32 ----------------------------


def test_token_dir_splits_are_views_of_the_map_and_batches_equal_int32(tok_dir, ref):
    config = small_config(tokens=str(tok_dir), val_fraction=0.2)
    mesh = make_mesh()
    train_it, eval_batches, s = pipeline.get_datasets(config, mesh)
    try:
        num_val = round(len(ref) * 0.2)
        np.testing.assert_array_equal(s.train_ids, ref[: len(ref) - num_val])
        np.testing.assert_array_equal(s.val_ids, ref[len(ref) - num_val :])
        assert s.train_ids.dtype == s.val_ids.dtype == np.uint16
        mapped = root_map(s.train_ids)
        assert Path(mapped.filename) == tok_dir / "tokens.npy" and len(mapped) == len(ref)
        assert np.shares_memory(mapped, s.train_ids) and np.shares_memory(mapped, s.val_ids)
        # What make_train_iterator builds: its windows gather from the map itself.
        windows = data.window_batches(s.train_ids, 4, 8, 8, shard_index=0, shard_count=1).windows
        assert np.shares_memory(windows.ids, mapped)

        in_memory = pipeline.make_train_iterator(
            np.array(s.train_ids, dtype=np.int32),
            mesh,
            batch_size=config.data.batch_size,
            max_length=config.data.max_length,
            stride=config.data.stride,
        )
        try:
            for _ in range(5):
                (x, y), (wx, wy) = next(train_it), next(in_memory)
                assert x.dtype == np.int32
                np.testing.assert_array_equal(np.asarray(x), np.asarray(wx))
                np.testing.assert_array_equal(np.asarray(y), np.asarray(wy))
        finally:
            in_memory.close()
        # Validation: non-overlapping windows of the held-out ids, in order (plain slicing).
        val = ref[len(ref) - num_val :]
        assert len(eval_batches) == 3
        for k, (x, y) in enumerate(eval_batches):
            starts = [8 * (4 * k + r) for r in range(4)]
            np.testing.assert_array_equal(np.asarray(x), np.stack([val[s0 : s0 + 8] for s0 in starts]))
            np.testing.assert_array_equal(np.asarray(y), np.stack([val[s0 + 1 : s0 + 9] for s0 in starts]))
    finally:
        train_it.close()
    assert s.corpus_fingerprint == {
        "kind": "tokens",
        "tokens_sha256": hashlib.sha256((tok_dir / "tokens.npy").read_bytes()).hexdigest(),
        "num_tokens": len(ref),
        "path": str(tok_dir.resolve()),
    }


def test_separate_validation_directory(tok_dir, text_dir, tmp_path, ref):
    val_dir = tmp_path / "val"
    token_files.tokenize_files([text_dir / "b.txt"], val_dir)
    config = small_config(tokens=str(tok_dir), val_tokens=str(val_dir), val_fraction=0.5)
    s = splits.load_splits(config)
    np.testing.assert_array_equal(s.train_ids, ref)  # all of it: val_fraction does not apply
    np.testing.assert_array_equal(s.val_ids, reference_ids([text_dir / "b.txt"]))
    fp = s.corpus_fingerprint
    assert fp["val_num_tokens"] == len(s.val_ids) and fp["val_path"] == str(val_dir.resolve())
    assert fp["val_tokens_sha256"] == hashlib.sha256((val_dir / "tokens.npy").read_bytes()).hexdigest()


def test_counts_and_active_vocabulary_on_a_map_equal_plain_numpy(tok_dir, ref, monkeypatch):
    monkeypatch.setattr(splits, "_CHUNK", 1000)  # many chunks
    s = splits.load_splits(small_config(tokens=str(tok_dir)))
    train = np.array(s.train_ids, dtype=np.int64)
    np.testing.assert_array_equal(s.train_counts(), np.bincount(train, minlength=50257))
    active = splits.with_active_vocabulary(s)
    want_ids = np.unique(ref)
    np.testing.assert_array_equal(active.active_ids, want_ids)
    assert active.train_ids.dtype == np.uint16 and active.corpus_fingerprint == s.corpus_fingerprint
    np.testing.assert_array_equal(active.train_ids, np.searchsorted(want_ids, train))
    np.testing.assert_array_equal(active.val_ids, np.searchsorted(want_ids, np.asarray(s.val_ids)))
    np.testing.assert_array_equal(active.train_counts(), np.bincount(train, minlength=50257))

    config = small_config(tokens=str(tok_dir))
    config.model.active_vocab = True
    splits.check_active_vocabulary_size(s, config.data.tokens)  # small: allowed
    monkeypatch.setattr(splits, "ACTIVE_VOCAB_MAX_TOKENS", len(ref) - 1)
    with pytest.raises(ValueError, match=rf"model.active_vocab=True with data.tokens=.*{len(ref):,} tokens"):
        splits.check_active_vocabulary_size(s, config.data.tokens)
    with pytest.raises(ValueError, match="active_vocab=False"):
        pipeline.get_datasets(config, make_mesh())


def test_token_dir_of_another_tokenizer_names_both(tmp_path, text_dir):
    other = tiktoken.Encoding(
        name="gpt2-copy",
        pat_str=GPT2._pat_str,
        mergeable_ranks=GPT2._mergeable_ranks,
        special_tokens={"<|endoftext|>": EOT},
    )
    token_files.tokenize_files([text_dir / "a.txt"], tmp_path / "other", tokenizer=other)
    with pytest.raises(ValueError, match=r"tokenizer='gpt2-copy', but data.tokenizer='gpt2'"):
        splits.load_splits(small_config(tokens=str(tmp_path / "other")))


def test_conflicting_sources(tok_dir, text_dir):
    with pytest.raises(ValueError, match="data.tokens=.* and data.text=.* are both set"):
        splits.load_splits(small_config(tokens=str(tok_dir), text=str(text_dir / "a.txt")))
    with pytest.raises(ValueError, match="data.val_tokens=.* needs data.tokens"):
        splits.load_splits(small_config(val_tokens=str(tok_dir)))


# --- Text directories and globs, tokenized in memory ----------------------------------------


def test_text_directory_and_glob_match_the_token_file(text_dir, tok_dir, ref):
    tokens, _ = token_files.open_tokens(tok_dir)
    for source in (str(text_dir), str(text_dir / "**" / "*.txt")):
        s = splits.load_splits(small_config(text=source, val_fraction=0.25))
        ids = np.concatenate([s.train_ids, s.val_ids])
        assert s.train_ids.dtype == np.int32
        np.testing.assert_array_equal(ids, ref)
        np.testing.assert_array_equal(ids, tokens)
        assert len(s.val_ids) == round(0.25 * len(ref))
        assert s.corpus_fingerprint == {
            "kind": "text",
            "sha256": hashlib.sha256(ref.astype("<i4").tobytes()).hexdigest(),
            "num_tokens": len(ref),
            "source": source,
        }


def test_text_directory_over_the_limit_points_to_jaxembed_tokenize(text_dir, monkeypatch):
    monkeypatch.setattr(splits, "TEXT_FILES_MAX_BYTES", 1000)
    with pytest.raises(ValueError, match=r"more than the .* tokenized in memory.*`jaxembed tokenize .* --out DIR`"):
        splits.load_splits(small_config(text=str(text_dir)))


def test_a_single_file_over_the_limit_follows_the_same_rule(tmp_path, monkeypatch):
    big = tmp_path / "big.txt"
    big.write_text("to be or not to be " * 100, encoding="utf-8")  # 1,900 bytes
    monkeypatch.setattr(splits, "TEXT_FILES_MAX_BYTES", 1000)
    with pytest.raises(
        ValueError, match=r"names a file of .* more than the 0 MiB tokenized in memory.*jaxembed tokenize"
    ):
        splits.load_splits(small_config(text=str(big)))


def test_single_file_keeps_the_old_path(text_dir):
    text = (text_dir / "sub" / "c.txt").read_text(encoding="utf-8")
    s = splits.load_splits(small_config(text=str(text_dir / "sub" / "c.txt")))
    ids = GPT2.encode(corpus.strip_gutenberg(text), allowed_special={"<|endoftext|>"})
    np.testing.assert_array_equal(np.concatenate([s.train_ids, s.val_ids]), ids)
    assert s.corpus_fingerprint["source"] == str(text_dir / "sub" / "c.txt")


# --- Fingerprints -----------------------------------------------------------------------------


def test_fingerprints_ignore_where_and_name_both_sources(tok_dir, tmp_path, text_dir):
    moved = tmp_path / "moved"
    shutil.copytree(tok_dir, moved)
    a = splits.load_splits(small_config(tokens=str(tok_dir))).corpus_fingerprint
    b = splits.load_splits(small_config(tokens=str(moved))).corpus_fingerprint
    assert a["path"] != b["path"] and splits.fingerprint_mismatch(a, b) is None
    c = splits.load_splits(small_config(text=str(text_dir / "a.txt"))).corpus_fingerprint
    message = splits.fingerprint_mismatch(a, c)
    assert f"token directory {tok_dir.resolve()}" in message and f"text {text_dir / 'a.txt'}" in message
    # Same text, different tokens: a different corpus.
    d = splits.text_fingerprint(np.array([1, 2, 3]), "x")
    assert splits.fingerprint_mismatch(d, splits.text_fingerprint(np.array([1, 2, 4]), "x")) is not None
    assert splits.fingerprint_mismatch(d, splits.text_fingerprint(np.array([1, 2, 3]), "y")) is None


# --- The CLI end to end ------------------------------------------------------------------------


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_tokenize_then_train_on_the_tokens(text_dir, tmp_path, capsys, ref):
    code, out, err = run_cli(["tokenize", text_dir, "--out", tmp_path / "T", "--workers", 2], capsys)
    assert code == 0, err
    assert (
        out.strip() == f"Tokenized 3 documents into {len(ref):,} gpt2 tokens (uint16): {tmp_path / 'T' / 'tokens.npy'}"
    )
    workdir = tmp_path / "W"
    args = ["train", "--workdir", workdir, "--tokens", tmp_path / "T", "--no-progress"]
    args += ["--config.train.steps=5", "--config.train.checkpoint_every=5", "--config.train.eval_every=5"]
    args += ["--config.train.eval_batches=2", "--config.data.val_fraction=0.2", "--config.data.batch_size=4"]
    args += ["--config.data.max_length=8", "--config.data.stride=8", "--config.model.num_layers=0"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    rows = metrics_rows(workdir)
    assert rows[-1]["step"] == 5 and math.isfinite(rows[-1]["train_loss"]) and math.isfinite(rows[-1]["val_loss"])
    counts = np.load(workdir / "token_counts.npy")
    np.testing.assert_array_equal(counts, np.bincount(ref[: len(ref) - round(0.2 * len(ref))], minlength=50257))


def test_cli_token_errors_are_one_line(text_dir, tmp_path, capsys):
    other = tmp_path / "other"
    code, _, err = run_cli(["tokenize", text_dir / "a.txt", "--out", other, "--tokenizer", "gpt5"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("jaxembed tokenize: error: tokenizer='gpt5'")
    code, _, err = run_cli(["tokenize", tmp_path / "nowhere", "--out", other], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    code, _, err = run_cli(["train", "--workdir", tmp_path / "W", "--tokens", tmp_path / "missing"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("jaxembed train: error: token directory")

    enc = tiktoken.Encoding(
        name="gpt2-copy",
        pat_str=GPT2._pat_str,
        mergeable_ranks=GPT2._mergeable_ranks,
        special_tokens={"<|endoftext|>": EOT},
    )
    token_files.tokenize_files([text_dir / "a.txt"], other, tokenizer=enc)
    code, _, err = run_cli(["train", "--workdir", tmp_path / "W", "--tokens", other], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "tokenizer='gpt2-copy', but data.tokenizer='gpt2'" in err
    code, _, err = run_cli(["train", "--workdir", tmp_path / "W", "--val-tokens", other], capsys)
    assert code == 2 and "needs data.tokens" in err


GET_DATASETS = (
    "from jaxembed import data, train\n"
    "from jaxembed.config import base_config\n"
    "config = base_config()\n"
    "config.data.max_length, config.data.stride, config.data.batch_size = 8, 8, 4\n"
    "train_it, _, _ = data.get_datasets(config, train.make_mesh(), text='to be or not to be ' * 500)\n"
    "print(next(train_it)[0].shape)\n"
)
# Worker processes re-run the script (spawn): the loader is built under the main guard.
WORKERS = (
    "from jaxembed import data\n"
    "if __name__ == '__main__':\n"
    "    train_it = iter(data.create_dataloader('to be or not to be ' * 500, batch_size=4, max_length=8, "
    "stride=8, num_workers=1))\n"
    "    print(next(train_it)[0].shape)\n"
)


@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize("script_text", [GET_DATASETS, WORKERS], ids=["get_datasets", "worker_processes"])
def test_a_script_that_ends_with_the_iterator_open_exits_cleanly(tmp_path, close, script_text):
    # A researcher's script: the public pipeline, one batch, then the end of the script, with the
    # iterator closed or not. Grain's prefetch thread (a daemon) was still placing batches when JAX's
    # exit handler tore the backend down: SIGABRT, "terminate called after throwing ...". And Grain's
    # iterators printed "Exception ignored in DatasetIterator.__del__" as the interpreter cleared modules.
    import subprocess
    import sys

    script = tmp_path / "script.py"
    indent = "    " if "__main__" in script_text else ""
    script.write_text(script_text + (f"{indent}train_it.close()\n" if close else ""))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (0, "(4, 8)\n"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]


def test_a_held_out_split_shorter_than_one_window_names_the_settings_that_fix_it():
    ids = np.arange(100, dtype=np.int32)  # 100 held-out tokens; a window of 200 needs 201
    with pytest.raises(ValueError) as info:
        pipeline.make_eval_batches(ids, make_mesh(), batch_size=4, max_length=200, num_batches=8)
    assert str(info.value) == (
        "the held-out slice has 100 tokens, too few for one validation batch of 4 x 200; lower data.max_length, "
        "raise data.val_fraction or use a longer text."
    )
