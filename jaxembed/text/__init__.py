"""Text to token ids: the GPT-2 tokenizer, corpora, streaming tokenization and token files.

The first stage of the data flow (text -> data -> nn -> train -> report). One module per concept:
``tokenizer`` (GPT-2's BPE built offline), ``corpus`` (named corpora and text files), ``streaming``
(tokenization that cuts only where the result cannot change) and ``token_files`` (memory-mapped
``tokens.npy`` + ``meta.json``).

Example:
  >>> from jaxembed import text
  >>> text.get_encoding("gpt2").encode("Hello, world")
  [15496, 11, 995]
"""

from jaxembed.text import corpus, streaming, token_files, tokenizer
from jaxembed.text.corpus import (
    CORPORA,
    CorpusUnavailableError,
    cache_dir,
    find_text_files,
    gutenberg_note,
    load_text,
    python_docs_text,
    strip_gutenberg,
)
from jaxembed.text.token_files import open_tokens, tokenize_files
from jaxembed.text.tokenizer import ENDOFTEXT, TokenizerUnavailableError, get_encoding

__all__ = [
    "CORPORA",
    "ENDOFTEXT",
    "CorpusUnavailableError",
    "TokenizerUnavailableError",
    "cache_dir",
    "corpus",
    "find_text_files",
    "get_encoding",
    "gutenberg_note",
    "load_text",
    "open_tokens",
    "python_docs_text",
    "streaming",
    "strip_gutenberg",
    "token_files",
    "tokenize_files",
    "tokenizer",
]
