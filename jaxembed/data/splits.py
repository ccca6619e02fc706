"""The corpus a config names, as training and held-out token ids (``Splits``).

Three sources, one result:

* ``data.tokens``: a directory written by ``jaxembed tokenize``
  (``jaxembed.text.token_files``). Its memory-mapped ``tokens.npy`` is split by
  plain slices, never copied: ``Splits.train_ids``/``val_ids`` are views of
  the map. ``data.val_tokens`` names a separate held-out directory instead.
* ``data.text`` naming a directory or a glob: its files (``*.txt`` inside
  directories), tokenized in memory with the layout ``tokenize_files``
  writes (each document, then ``<|endoftext|>``), up to
  ``TEXT_FILES_MAX_BYTES``.
* ``data.text`` naming a file, else the named ``data.corpus``: one text,
  Gutenberg licence cut off, tokenized in memory.

Without ``data.val_tokens`` the last ``data.val_fraction`` of the tokens is
held out. ``Splits.corpus_fingerprint`` identifies the corpus cheaply (a
token directory's SHA-256 is read from its ``meta.json``), so a resumed run
can refuse a different corpus (``fingerprint_mismatch``).

Example:
  >>> s = split_corpus(" Romeo" * 1000, val_fraction=0.1)
  >>> len(s.train_ids), len(s.val_ids), s.corpus_fingerprint["num_tokens"]
  (900, 100, 1000)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import ml_collections
import numpy as np

from jaxembed.data.windows import tokenize
from jaxembed.errors import InvalidArgumentError
from jaxembed.text import corpus, token_files, tokenizer

__all__ = [
    "ACTIVE_VOCAB_MAX_TOKENS",
    "TEXT_FILES_MAX_BYTES",
    "Splits",
    "check_active_vocabulary_size",
    "describe_corpus",
    "describe_validation",
    "expand_active",
    "fingerprint_mismatch",
    "load_splits",
    "read_text_files",
    "split_corpus",
    "split_ids",
    "split_token_files",
    "text_fingerprint",
    "tokens_fingerprint",
    "with_active_vocabulary",
]

#: Largest total size of the files ``data.text`` may name as a directory or glob (tokenized in memory).
TEXT_FILES_MAX_BYTES = 64 << 20
#: Largest token-file corpus ``model.active_vocab`` re-indexes: it holds a compact copy of the ids in RAM.
ACTIVE_VOCAB_MAX_TOKENS = 1 << 26
_CHUNK = 1 << 22  # ids per step when counting or re-indexing (bounds temporaries)
# Fingerprint keys that only say where a corpus was read from, not what it is.
_WHERE = ("path", "source", "val_path")


@dataclasses.dataclass(frozen=True)
class Splits:
    """Token ids of the training and held-out parts of the corpus.

    Attributes:
      train_ids: ``[N_train]`` ids the model trains on: int32 in memory, or a
        read-only uint16/uint32 view of a token directory's memory map.
      val_ids: ``[N_val]`` held-out ids (the end of the corpus, or
        ``data.val_tokens``), stored like ``train_ids``.
      vocab_size: the tokenizer's vocabulary size (GPT-2: 50,257).
      active_ids: with ``model.active_vocab``, the sorted tokenizer ids that
        occur in the corpus; ``train_ids``/``val_ids`` then hold compact ids
        ``0..K-1`` indexing it. ``None`` otherwise.
      corpus_fingerprint: what the corpus is (see ``tokens_fingerprint`` and
        ``text_fingerprint``); ``None`` for splits built by hand.
      text_note: what was done with the text before it was tokenized, in words
        (``jaxembed.text.corpus.gutenberg_note``); ``jaxembed train`` prints it.
        ``None`` for splits built by hand.
    """

    train_ids: np.ndarray
    val_ids: np.ndarray
    vocab_size: int
    active_ids: np.ndarray | None = None
    corpus_fingerprint: dict | None = None
    text_note: str | None = None

    @property
    def model_vocab_size(self) -> int:
        """Rows the model's token table needs: ``K`` with an active vocabulary, else ``vocab_size``."""
        return self.vocab_size if self.active_ids is None else len(self.active_ids)

    def train_counts(self) -> np.ndarray:
        """``counts_V`` int64: how often each tokenizer id occurs in the training split.

        Counted in chunks, so a memory-mapped corpus is read once and never copied.

        Example:
          >>> Splits(np.array([2, 0, 2]), np.array([1]), vocab_size=4).train_counts().tolist()
          [1, 0, 2, 0]
        """
        counts_V = np.zeros(self.vocab_size, np.int64)
        for lo in range(0, len(self.train_ids), _CHUNK):
            chunk = self.train_ids[lo : lo + _CHUNK]
            counts_V += np.bincount(
                chunk if self.active_ids is None else self.active_ids[chunk], minlength=len(counts_V)
            )
        return counts_V


def text_fingerprint(ids: np.ndarray, source: str | None) -> dict:
    """``{"kind": "text", "sha256", "num_tokens", "source"}``: the SHA-256 of the ids as little-endian int32.

    Example:
      >>> fp = text_fingerprint(np.array([1, 2]), "x.txt")
      >>> fp["sha256"] == hashlib.sha256(np.array([1, 2], "<i4").tobytes()).hexdigest(), fp["num_tokens"]
      (True, 2)
    """
    digest = hashlib.sha256()
    for lo in range(0, len(ids), _CHUNK):
        digest.update(np.ascontiguousarray(ids[lo : lo + _CHUNK], dtype="<i4").data)
    return {"kind": "text", "sha256": digest.hexdigest(), "num_tokens": int(len(ids)), "source": source}


def tokens_fingerprint(path: str | os.PathLike[str], meta: dict, val_path=None, val_meta: dict | None = None) -> dict:
    """``{"kind": "tokens", "tokens_sha256", "num_tokens", "path"}`` of a token directory, from its meta.

    With a separate validation directory, ``val_tokens_sha256``,
    ``val_num_tokens`` and ``val_path`` too. Reads nothing but ``meta``.

    Example:
      >>> tokens_fingerprint("tok", {"tokens_sha256": "ab", "num_tokens": 3})["num_tokens"]
      3
    """
    fp = {"kind": "tokens", "tokens_sha256": meta["tokens_sha256"], "num_tokens": int(meta["num_tokens"])}
    fp["path"] = os.path.abspath(path)
    if val_meta is not None:
        fp["val_tokens_sha256"], fp["val_num_tokens"] = val_meta["tokens_sha256"], int(val_meta["num_tokens"])
        fp["val_path"] = os.path.abspath(val_path)
    return fp


def fingerprint_mismatch(stored: dict, current: dict) -> str | None:
    """``None`` when both fingerprints name the same corpus, else a sentence naming both.

    Where a corpus was read from (``path``, ``source``) does not count: a
    token directory may move. Its contents (hashes, lengths, kind) do.

    Example:
      >>> a = text_fingerprint(np.array([1, 2]), "a.txt")
      >>> fingerprint_mismatch(a, {**a, "source": "copy.txt"}) is None
      True
      >>> fingerprint_mismatch(a, text_fingerprint(np.array([1]), "b.txt"))[:40]
      'the workdir was trained on text a.txt (2'
    """

    def what(fp: dict) -> dict:
        return {k: v for k, v in fp.items() if k not in _WHERE}

    if what(stored) == what(current):
        return None
    return (
        f"the workdir was trained on {describe_corpus(stored)}, but this run reads {describe_corpus(current)}; "
        "train on the same corpus, or use another --workdir."
    )


def describe_corpus(fp: dict) -> str:
    """A fingerprint in words, e.g. ``token directory /data/tok (1,234 tokens, sha256 3f2a...)``.

    Example:
      >>> describe_corpus({"kind": "text", "sha256": "0123456789abcdef", "num_tokens": 5, "source": "a.txt"})
      'text a.txt (5 tokens, sha256 0123456789ab...)'
    """
    if fp.get("kind") == "tokens":
        where, sha = f"token directory {fp.get('path')}", fp.get("tokens_sha256")
    else:
        where, sha = f"text {fp.get('source')}", fp.get("sha256")
    out = f"{where} ({fp.get('num_tokens', 0):,} tokens, sha256 {str(sha)[:12]}...)"
    if "val_path" in fp:
        out += f" with validation directory {fp['val_path']} ({fp.get('val_num_tokens', 0):,} tokens)"
    return out


def describe_validation(splits: Splits, val_fraction: float) -> str | None:
    """Where the held-out split came from, in words, for the run report (``None`` for hand-built splits).

    A token directory without ``data.val_tokens`` holds out the last
    ``val_fraction`` of its ``tokens.npy``: the end of its last file in path
    order, which its ``meta.json`` names (documents with ``start``/``stop``).

    Example:
      >>> s = split_corpus(" Romeo" * 1000, val_fraction=0.1, source="r.txt")
      >>> describe_validation(s, 0.1)
      'the last 10% of the tokens of text r.txt (100 tokens)'
      >>> describe_validation(split_corpus(" Romeo" * 1000, val_fraction=0.1, source="python-docs"), 0.1)
      'the last 10% of the tokens of the python-docs corpus (100 tokens)'
    """
    fp = splits.corpus_fingerprint
    if not fp:
        return None
    share = f"the last {100 * val_fraction:g}% of the tokens"
    num_val = len(splits.val_ids)
    if fp.get("kind") != "tokens":
        source = fp.get("source")
        what = (
            "the text passed in"
            if source == "text argument"
            else f"the {source} corpus"
            if source in corpus.CORPORA
            else f"text {source}"
        )
        return f"{share} of {what} ({num_val:,} tokens)"
    if "val_path" in fp:
        return f"the token directory {fp['val_path']} ({num_val:,} tokens), held out whole (--val-tokens)"
    where = f"{share} of the token directory {fp['path']} ({num_val:,} tokens)"
    try:
        docs = json.loads((pathlib.Path(fp["path"]) / "meta.json").read_text(encoding="utf-8"))["documents"]
    except (OSError, ValueError, KeyError):
        return where  # the directory moved since training: its file names are not at hand
    first = int(fp["num_tokens"]) - num_val
    # A document spans [start, stop] with its separator at stop; the held-out tail starts in the first one reaching it.
    held = [d["path"] for d in docs if int(d["stop"]) >= first]
    if len(held) <= 1:
        return f"{where}, i.e. the end of its last file in path order: {held[0] if held else '?'}"
    return f"{where}, i.e. the end of {held[0]} and the {len(held) - 1} files after it in path order, to {held[-1]}"


def _check_fraction(val_fraction: float) -> float:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise InvalidArgumentError(f"data.val_fraction={val_fraction} is not allowed; it must lie in (0, 1).")
    return float(val_fraction)


def split_ids(
    ids: np.ndarray, val_fraction: float, *, vocab_size: int, fingerprint: dict, text_note: str | None = None
) -> Splits:
    """Holds out the last ``val_fraction`` of ``ids`` by slicing (a memory map stays a map).

    Raises:
      InvalidArgumentError: ``val_fraction`` (``data.val_fraction``) is not in (0, 1).

    Example:
      >>> ids = np.arange(10, dtype=np.uint16)
      >>> s = split_ids(ids, 0.1, vocab_size=50257, fingerprint={})
      >>> s.val_ids.tolist(), np.shares_memory(s.train_ids, ids)
      ([9], True)
    """
    num_val = int(round(len(ids) * _check_fraction(val_fraction)))
    train_ids, val_ids = ids[: len(ids) - num_val], ids[len(ids) - num_val :]
    return Splits(train_ids, val_ids, vocab_size, corpus_fingerprint=fingerprint, text_note=text_note)


def split_corpus(
    text: str, *, tokenizer_name: str = "gpt2", val_fraction: float = 0.1, source: str | None = None
) -> Splits:
    """Tokenizes ``text`` and holds out its last ``val_fraction`` of tokens.

    Project Gutenberg texts are cut to their body first (``corpus.strip_gutenberg``),
    so the held-out slice is the play, never the licence; ``Splits.text_note`` says so.
    ``source`` names the text in the fingerprint.

    Raises:
      InvalidArgumentError: ``val_fraction`` is not in (0, 1).

    Example:
      >>> s = split_corpus(" Romeo" * 1000, val_fraction=0.1)
      >>> len(s.train_ids), len(s.val_ids)
      (900, 100)
    """
    _check_fraction(val_fraction)
    note = corpus.gutenberg_note(text)
    ids = tokenize(corpus.strip_gutenberg(text), tokenizer_name)  # a text without markers comes back whole
    vocab_size = tokenizer.get_encoding(tokenizer_name).n_vocab
    fingerprint = text_fingerprint(ids, source)
    return split_ids(ids, val_fraction, vocab_size=vocab_size, fingerprint=fingerprint, text_note=note)


def check_text_size(source: str | os.PathLike[str], paths: list[pathlib.Path]) -> None:
    """One rule for files, folders and globs: at most ``TEXT_FILES_MAX_BYTES`` are tokenized in memory.

    Raises:
      InvalidArgumentError: the files are larger; the message says how to use ``jaxembed tokenize``.
    """
    total = sum(p.stat().st_size for p in paths)
    if total > TEXT_FILES_MAX_BYTES:
        what = f"{len(paths)} files" if len(paths) != 1 else "a file"
        raise InvalidArgumentError(
            f"data.text={os.fspath(source)!r} names {what} of {total / 2**20:,.1f} MiB, more than the "
            f"{TEXT_FILES_MAX_BYTES >> 20} MiB tokenized in memory; tokenize it once with "
            f"`jaxembed tokenize {os.fspath(source)} --out DIR`, then train with --tokens DIR."
        )


def read_text_files(source: str | os.PathLike[str], tokenizer_name: str = "gpt2") -> np.ndarray:
    """``ids_N`` int32 of the files a directory or glob names, laid out as ``tokenize_files`` writes them.

    Each file (``*.txt`` inside directories, sorted by path) is read as
    ``corpus.load_text(path, strip=True)`` reads it and encoded whole (a
    literal ``<|endoftext|>`` is text), then the ``<|endoftext|>`` id.

    Raises:
      ValueError: nothing matches, a file is not UTF-8 or empty, or the files
        hold more than ``TEXT_FILES_MAX_BYTES`` (the message says how to use
        ``jaxembed tokenize`` instead).

    Example:
      >>> import pathlib, tempfile
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (d / "a.txt").write_text("Hello world")
      >>> read_text_files(d).tolist()
      [15496, 995, 50256]
    """
    return _read_text_files(source, tokenizer_name)[0]


def _read_text_files(source: str | os.PathLike[str], tokenizer_name: str) -> tuple[np.ndarray, str]:
    """``read_text_files``, and the ``corpus.gutenberg_note`` of the files it read."""
    paths = corpus.find_text_files(source)
    check_text_size(source, paths)
    enc = tokenizer.get_encoding(tokenizer_name)
    eot = [enc.encode_single_token(tokenizer.ENDOFTEXT)]
    parts, texts = [], []
    for p in paths:
        texts.append(corpus.load_text(p))  # at most TEXT_FILES_MAX_BYTES in all, for the note
        parts += [enc.encode_ordinary(corpus.strip_gutenberg(texts[-1])), eot]
    return np.concatenate(parts).astype(np.int32), corpus.gutenberg_note(texts)


def _open_token_dir(field: str, path: str, tokenizer_name: str) -> tuple[np.memmap, dict]:
    tokens, meta = token_files.open_tokens(path)
    if meta.get("tokenizer") != tokenizer_name:
        raise InvalidArgumentError(
            f"data.{field}={path!r} was tokenized with tokenizer={meta.get('tokenizer')!r}, but "
            f"data.tokenizer={tokenizer_name!r}; set --config.data.tokenizer={meta.get('tokenizer')} or "
            f"re-tokenize with `jaxembed tokenize ... --tokenizer {tokenizer_name}`."
        )
    return tokens, meta


def split_token_files(
    tokens: str, val_tokens: str | None = None, *, tokenizer_name: str = "gpt2", val_fraction: float = 0.1
) -> Splits:
    """``Splits`` of the token directory ``tokens`` (and ``val_tokens``): views of the memory maps, no copy.

    Raises:
      InvalidArgumentError: a directory is missing or incomplete, was made with another
        tokenizer than ``tokenizer_name``, or ``val_fraction`` is not in (0, 1).

    Example:
      >>> import pathlib, tempfile
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (d / "a.txt").write_text("to be or not to be " * 20)
      >>> _ = token_files.tokenize_files([d], d / "tok")
      >>> s = split_token_files(str(d / "tok"))
      >>> len(s.train_ids), len(s.val_ids), s.train_ids.dtype, s.corpus_fingerprint["kind"]
      (110, 12, dtype('uint16'), 'tokens')
    """
    tokens_N, meta = _open_token_dir("tokens", tokens, tokenizer_name)
    vocab_size = int(meta["n_vocab"])
    if not val_tokens:
        fingerprint = tokens_fingerprint(tokens, meta)
        note = _token_dir_note(meta)
        return split_ids(tokens_N, val_fraction, vocab_size=vocab_size, fingerprint=fingerprint, text_note=note)
    val_N, val_meta = _open_token_dir("val_tokens", val_tokens, tokenizer_name)
    fingerprint = tokens_fingerprint(tokens, meta, val_tokens, val_meta)
    note = f"{_token_dir_note(meta)}; validation: {_token_dir_note(val_meta)}"
    return Splits(tokens_N, val_N, vocab_size, corpus_fingerprint=fingerprint, text_note=note)


def _token_dir_note(meta: dict) -> str:
    # tokenize_files stripped each document as corpus.strip_gutenberg does, and recorded it.
    docs = meta.get("documents", [])
    stripped = sum(bool(d.get("gutenberg_stripped")) for d in docs)
    return f"Project Gutenberg header and licence stripped from {stripped} of {len(docs)} files when tokenized"


def load_splits(config: ml_collections.ConfigDict, *, text: str | None = None) -> Splits:
    """The ``Splits`` a training config describes: the one place that reads ``config.data`` for them.

    The corpus is ``text`` if given, else ``data.tokens`` (with ``data.val_tokens``), else
    ``data.text`` (a file, a directory or a glob), else the named ``data.corpus``. With
    ``model.active_vocab`` the splits are re-indexed onto the ids that occur (the one place
    that decision is made).

    Raises:
      InvalidArgumentError: both ``data.tokens`` and ``data.text`` are set,
        ``data.val_tokens`` without ``data.tokens``, or a source is invalid.
      MissingFileError, corpus.CorpusUnavailableError: a text cannot be read.

    Example:
      >>> from jaxembed.config import base_config
      >>> len(load_splits(base_config(), text=" Romeo" * 1000).val_ids)
      100
    """
    d = config.data
    if d.tokens and d.text:
        raise InvalidArgumentError(
            f"data.tokens={d.tokens!r} and data.text={d.text!r} are both set; train on one of them."
        )
    if d.val_tokens and not d.tokens:
        raise InvalidArgumentError(
            f"data.val_tokens={d.val_tokens!r} needs data.tokens (--tokens DIR) for the training tokens."
        )
    if text is not None:
        splits = split_corpus(text, tokenizer_name=d.tokenizer, val_fraction=d.val_fraction, source="text argument")
    elif d.tokens:
        splits = split_token_files(d.tokens, d.val_tokens, tokenizer_name=d.tokenizer, val_fraction=d.val_fraction)
    elif d.text and corpus.names_many_files(d.text):
        ids, note = _read_text_files(d.text, d.tokenizer)
        vocab_size = tokenizer.get_encoding(d.tokenizer).n_vocab
        fingerprint = text_fingerprint(ids, str(d.text))
        splits = split_ids(ids, d.val_fraction, vocab_size=vocab_size, fingerprint=fingerprint, text_note=note)
    else:
        source = d.text or d.corpus
        if d.text and pathlib.Path(d.text).is_file():
            check_text_size(d.text, [pathlib.Path(d.text)])
        splits = split_corpus(
            corpus.load_text(source), tokenizer_name=d.tokenizer, val_fraction=d.val_fraction, source=source
        )
    if config.model.active_vocab:
        check_active_vocabulary_size(splits, d.tokens)
        # The model sees compact ids 0..K-1: its table, softmax and AdamW cover K rows.
        splits = with_active_vocabulary(splits)
    return splits


def with_active_vocabulary(splits: Splits) -> Splits:
    """Re-indexes the splits onto the ids that occur in them (``model.active_vocab``).

    Works in chunks (a count over the vocabulary, then a lookup table), so
    its only full-size allocation is the compact copy of the ids, kept in
    their storage dtype (int32, uint16 or uint32: ``K`` compact ids fit
    wherever the original ids did).

    Example:
      >>> s = with_active_vocabulary(Splits(np.array([7, 3, 7]), np.array([9]), vocab_size=10))
      >>> s.active_ids.tolist(), s.train_ids.tolist(), s.val_ids.tolist()
      ([3, 7, 9], [1, 0, 1], [2])
    """
    seen = np.zeros(splits.vocab_size, bool)
    for ids in (splits.train_ids, splits.val_ids):
        for lo in range(0, len(ids), _CHUNK):
            seen[ids[lo : lo + _CHUNK]] = True
    active_ids = np.flatnonzero(seen).astype(np.int32)
    lookup = np.zeros(splits.vocab_size, np.int64)
    lookup[active_ids] = np.arange(len(active_ids))

    def compact(ids: np.ndarray) -> np.ndarray:
        dtype = ids.dtype if ids.dtype in (np.uint16, np.uint32) else np.dtype(np.int32)
        out = np.empty(len(ids), dtype)
        for lo in range(0, len(ids), _CHUNK):
            out[lo : lo + _CHUNK] = lookup[ids[lo : lo + _CHUNK]]
        return out

    return dataclasses.replace(
        splits, train_ids=compact(splits.train_ids), val_ids=compact(splits.val_ids), active_ids=active_ids
    )


def check_active_vocabulary_size(splits: Splits, tokens: str | None) -> None:
    """Refuses ``model.active_vocab`` on token files (``tokens``) over ``ACTIVE_VOCAB_MAX_TOKENS`` tokens.

    The compact ids are a copy in RAM, which the memory-mapped corpus exists
    to avoid; and on a corpus that large nearly every id occurs anyway, so
    the table would barely shrink.

    Raises:
      InvalidArgumentError: names the token count, the limit and the way out.
    """
    n = len(splits.train_ids) + len(splits.val_ids)
    if tokens and n > ACTIVE_VOCAB_MAX_TOKENS:
        raise InvalidArgumentError(
            f"model.active_vocab=True with data.tokens={tokens!r}: {n:,} tokens is more than the "
            f"{ACTIVE_VOCAB_MAX_TOKENS:,} re-indexed in memory; set --config.model.active_vocab=False "
            "(a corpus this large uses nearly the whole vocabulary anyway)."
        )


def expand_active(token_KxD: np.ndarray, active_ids: np.ndarray | None, vocab_size: int) -> np.ndarray:
    """Places the rows of a compact (active-vocabulary) table at their tokenizer ids.

    Rows of ids absent from ``active_ids`` are zero. With ``active_ids=None``
    the table is returned as it is.

    Example:
      >>> expand_active(np.ones((2, 1)), np.array([1, 3]), vocab_size=4)[:, 0].tolist()
      [0.0, 1.0, 0.0, 1.0]
    """
    if active_ids is None:
        return token_KxD
    token_VxD = np.zeros((vocab_size, token_KxD.shape[1]), token_KxD.dtype)
    token_VxD[active_ids] = token_KxD
    return token_VxD
