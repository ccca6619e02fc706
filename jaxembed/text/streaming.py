"""Text files read as pieces that encode exactly like the whole file.

``jaxembed.text.token_files`` tokenizes corpora far larger than memory. It reads
each file in pieces of ``READ_BYTES`` bytes (``decoded``: strict UTF-8, BOM
dropped, CRLF/CR turned into LF, as ``jaxembed.text.corpus.load_text`` reads
text), finds the Project Gutenberg body in a first pass (``scan``), and
hands the tokenizer pieces of about ``PIECE_CHARS`` characters cut only where
its pre-tokenization regex provably splits anyway (``BoundaryRule``), so the
ids equal those of encoding each document whole (``document_pieces``);
``encode_documents`` encodes those pieces on threads into a raw id file.

Example:
  >>> import pathlib, tempfile
  >>> from jaxembed.text.tokenizer import get_encoding
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
  >>> _ = path.write_text("licence\\n*** START OF IT ***\\nTo be, or not to be\\n*** END OF IT ***\\n")
  >>> src = scan(path)
  >>> src.gutenberg, list(document_pieces(src, boundary_rule(get_encoding("gpt2"))))
  (True, ['To be, or not to be\\n'])
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tiktoken

from jaxembed.errors import InvalidArgumentError
from jaxembed.text import tokenizer as tokenizer_lib

__all__ = [
    "PIECE_CHARS",
    "READ_BYTES",
    "BoundaryRule",
    "Source",
    "boundary_rule",
    "decoded",
    "document_pieces",
    "encode_documents",
    "scan",
]

#: Bytes read (and decoded) from a file at a time.
READ_BYTES = 1 << 20
#: Characters handed to one encode call (pieces end at the last safe boundary past this).
PIECE_CHARS = 1 << 20

# Gutenberg markers as jaxembed.text.corpus matches them (``^\*\*\* ?START OF``
# and ``^\*\*\* ?END OF``); the line-start check is done by hand, in a stream.
_MARK = re.compile(r"\*\*\* ?(START|END) OF")
_MARK_LEN = len("*** START OF")


@dataclass(frozen=True)
class BoundaryRule:
    """Where a text may be cut without changing its tokens.

    tiktoken splits text with a regex, then byte-pair-encodes each match on
    its own; ``encode(a + b) == encode(a) + encode(b)`` whenever the matches
    of ``a + b`` are those of ``a`` followed by those of ``b``. Cut at ``p``
    with ``text[p - 1]`` in ``left`` and ``text[p]`` one of ``right`` (ASCII
    space, tab, newline: whitespace for every regex engine).

    GPT-2 (r50k) regex ``'(?:[sdmt]|ll|ve|re)| ?\\p{L}++| ?\\p{N}++|
    ?[^\\s\\p{L}\\p{N}]++|\\s++$|\\s+(?!\\S)|\\s`` (older tiktoken: the same
    without possessives and ``\\s++$``): with ``left`` = not whitespace,

    * in ``a + b`` the match holding ``text[p - 1]`` ends at ``p``: the only
      alternatives that can consume a non-space character (letters, digits,
      other symbols, contractions) cannot consume the whitespace at ``p``;
    * matching ``a`` alone differs from matching ``a + b`` only where an
      attempt reads position ``p`` (end of text instead of whitespace). An
      attempt reaches ``p`` only by consuming ``text[p - 1]`` first, so with
      one of the non-space atoms, whose next step fails on both whitespace
      and end of text; the whitespace atoms (``\\s+``, ``\\s++$``) cannot
      cross the non-space ``text[p - 1]``; ``$`` only follows ``\\s++``;
    * the regex looks only forward (no look-behind, no ``^``), so matching
      ``b`` alone equals matching ``a + b`` from ``p`` on.

    ``left`` is ``not str.isspace()``, a subset of ``\\S`` (Unicode
    White_Space is a subset of Python's whitespace). For the cl100k and o200k
    regexes the same argument holds with ``left`` = ASCII letters and digits:
    there punctuation may swallow following newlines (``[\\r\\n]*``) and
    digits group in threes, but no atom that consumes a letter or digit can
    consume whitespace. The tests check every rule against encoding whole
    texts, on real and adversarial text.
    """

    name: str
    left_is_ok: object  # Callable[[str], bool]
    right: tuple[str, ...] = ("\n", " ", "\t")

    def last_boundary(self, text: str, start: int = 1) -> int:
        """The largest safe cut ``p`` in ``[max(start, 1), len(text))``, else 0."""
        best = 0
        lo = max(start, 1)
        for sep in self.right:
            p = text.rfind(sep, max(lo, best + 1))
            while p >= lo and p > best:
                if self.left_is_ok(text[p - 1]):
                    best = p
                    break
                p = text.rfind(sep, max(lo, best + 1), p)
        return best


def _not_space(ch: str) -> bool:
    return not ch.isspace()


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


# Patterns as tiktoken 0.14 spells them; a tokenizer with any other pattern is
# encoded one whole document at a time (correct, but memory grows with the
# largest document).
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_GPT2_PATTERNS = (
    tokenizer_lib.GPT2_PATTERN,
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
)
_RULES = {
    **{p: BoundaryRule("gpt2", _not_space) for p in _GPT2_PATTERNS},
    CL100K_PATTERN: BoundaryRule("cl100k", _ascii_alnum),
    O200K_PATTERN: BoundaryRule("o200k", _ascii_alnum),
}


def boundary_rule(enc: tiktoken.Encoding) -> BoundaryRule | None:
    return _RULES.get(enc._pat_str)


@dataclass
class Source:
    path: Path
    size: int
    sha256: str
    body_start: int = 0  # characters of the normalised text, Gutenberg header skipped
    body_end: int | None = None  # None: to the end
    gutenberg: bool = False

    def record(self) -> dict:
        return {"path": str(self.path), "bytes": self.size, "sha256": self.sha256, "gutenberg_stripped": self.gutenberg}


def decoded(path: Path, digest=None) -> Iterator[tuple[str, int]]:
    """Yields ``(text, n_bytes)``: the file's text as ``corpus.load_text`` normalises it, in pieces.

    Raises:
      ValueError: the file is not UTF-8 (names the file and byte offset).
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, carry, at_start = 0, "", True
    with open(path, "rb") as f:
        while True:
            data = f.read(READ_BYTES)
            final = not data
            if digest is not None:
                digest.update(data)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                raise InvalidArgumentError(
                    f"input file is not UTF-8: {path}: byte 0x{e.object[e.start]:02x} at offset {at}"
                ) from None
            offset += len(data)
            if at_start and text:
                text, at_start = text.removeprefix("\ufeff"), False
            text, carry = carry + text, ""
            if not final and text.endswith("\r"):
                text, carry = text[:-1], "\r"  # maybe half of a CRLF
            yield text.replace("\r\n", "\n").replace("\r", "\n"), len(data)
            if final:
                return


def scan(path: Path) -> Source:
    """First pass: size, SHA-256, UTF-8 check, Gutenberg body and emptiness, in bounded memory."""
    digest = hashlib.sha256()
    pos = 0  # characters before the current piece
    tail = ""  # the last _MARK_LEN + 1 characters before the piece, to see markers that straddle pieces
    start_seen = False  # a START line was found (the first one counts, as in re.search)
    body_start = None  # character after the START line's newline
    body_end = None
    first_body_char = None  # first non-whitespace character at or after body_start
    any_text = False
    for text, _ in decoded(path, digest):
        any_text = any_text or not text.isspace() and text != ""
        if body_end is None:
            buf, base = tail + text, pos - len(tail)
            if start_seen and body_start is None and (nl := text.find("\n")) >= 0:
                body_start = pos + nl + 1
            for m in _MARK.finditer(buf):
                if m.end() <= len(tail) or not (base + m.start() == 0 or buf[m.start() - 1] == "\n"):
                    continue  # seen in the previous piece, or not at a line start
                at = base + m.start()
                if not start_seen and m.group(1) == "START":
                    start_seen = True
                    if (nl := buf.find("\n", m.end())) >= 0:
                        body_start = base + nl + 1
                elif body_start is not None and m.group(1) == "END" and at >= body_start:
                    first_body_char = _first_text_char(buf, base, body_start, first_body_char)
                    body_end = at
                    break
            if body_end is None and body_start is not None:
                first_body_char = _first_text_char(buf, base, body_start, first_body_char)
            tail = buf[-(_MARK_LEN + 1) :]
        pos += len(text)
    sha = digest.hexdigest()
    size = path.stat().st_size
    if body_end is not None:
        if first_body_char is None or first_body_char >= body_end:
            raise InvalidArgumentError(
                f"input file has an empty Project Gutenberg body (only whitespace between START and END): {path}"
            )
        return Source(path, size, sha, body_start, body_end, gutenberg=True)
    if not any_text:
        raise InvalidArgumentError(f"input file is empty (or only whitespace): {path}")
    return Source(path, size, sha)


def _first_text_char(buf: str, base: int, body_start: int, found: int | None) -> int | None:
    if found is not None:
        return found
    lo = max(body_start - base, 0)
    rest = buf[lo:]
    stripped = rest.lstrip()
    return base + lo + len(rest) - len(stripped) if stripped else None


def document_pieces(src: Source, rule: BoundaryRule | None, progress=None) -> Iterator[str]:
    """Second pass: the document's body in pieces cut at ``rule``'s safe boundaries."""
    digest = hashlib.sha256()
    pos, pending, searched = 0, "", 1
    for text, n_bytes in decoded(src.path, digest):
        lo = max(src.body_start - pos, 0)
        hi = len(text) if src.body_end is None else min(src.body_end - pos, len(text))
        pos += len(text)
        if hi > lo:
            pending += text[lo:hi]
        if progress is not None:
            progress.update(n_bytes)
        while rule is not None and len(pending) >= PIECE_CHARS:
            cut = rule.last_boundary(pending, searched)
            if cut == 0:  # no safe boundary yet: read on (memory grows only for such text)
                searched = len(pending)
                break
            yield pending[:cut]
            pending, searched = pending[cut:], 1
    if digest.hexdigest() != src.sha256:
        raise InvalidArgumentError(f"input file changed while it was being tokenized: {src.path}; run again.")
    if pending:
        yield pending


def encode_documents(
    sources: Sequence[Source], enc: tiktoken.Encoding, dtype: np.dtype, workers: int, f: BinaryIO, bar=None
) -> list[tuple[int, int]]:
    """Encodes every document into ``f`` as raw ``dtype`` ids, each followed by ``<|endoftext|>``.

    ``workers`` threads encode pieces (tiktoken releases the GIL); a bounded
    queue of futures keeps the ids in order and memory bounded.

    Returns:
      Each document's ``(start, stop)``: its ids are ``[start, stop)`` of what
      was written, the separator sits at ``stop``.

    Example:
      >>> import io, pathlib, tempfile
      >>> from jaxembed.text.tokenizer import get_encoding
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
      >>> _ = path.write_text("Hello world")
      >>> f = io.BytesIO()
      >>> encode_documents([scan(path)], get_encoding("gpt2"), np.dtype("<u2"), 1, f)
      [(0, 2)]
      >>> np.frombuffer(f.getvalue(), "<u2").tolist()
      [15496, 995, 50256]
    """
    rule = boundary_rule(enc)
    eot = np.array([enc.encode_single_token(tokenizer_lib.ENDOFTEXT)], dtype=dtype)
    spans: list[tuple[int, int]] = []
    count, start = 0, 0

    def encode(text: str) -> np.ndarray:
        # encode_to_numpy skips the Python list (and releases the GIL); no
        # special tokens allowed or disallowed: literal "<|endoftext|>" is text.
        return enc.encode_to_numpy(text, disallowed_special=())

    def drain_one() -> None:
        nonlocal count, start
        item = inflight.popleft()
        if item is None:  # end of a document
            spans.append((start, count))
            f.write(eot.data)
            count += 1
            start = count
            return
        ids = item.result()
        f.write(ids.astype(dtype).data)
        count += len(ids)
        if bar is not None:
            bar.set_postfix_str(f"{count / max(bar.format_dict['elapsed'], 1e-9) / 1e6:.2f}M tok/s", refresh=False)

    # A bounded queue of futures keeps results in order and memory bounded.
    inflight: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="tokenize") as pool:
        for src in sources:
            for piece in document_pieces(src, rule, bar):
                inflight.append(pool.submit(encode, piece))
                while len(inflight) > 2 * workers:
                    drain_one()
            inflight.append(None)
        while inflight:
            drain_one()
    return spans
