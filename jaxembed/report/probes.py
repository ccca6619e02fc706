"""Which tokens the report asks for neighbours: the configured probes, filled from the corpus.

Example:
  >>> from jaxembed.text.tokenizer import get_encoding
  >>> enc = get_encoding("gpt2")
  >>> counts_V = np.zeros(enc.n_vocab, int)
  >>> counts_V[enc.encode(" return")] = 9
  >>> [enc.decode([i]) for i in fill_probes(enc, counts_V, [], want=1)]
  [' return']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tiktoken


def fill_probes(enc: tiktoken.Encoding, counts_V: np.ndarray, probe_ids: Sequence[int], want: int = 6) -> list[int]:
    """``probe_ids`` plus the corpus's most frequent word tokens, until ``want`` of them occur in it.

    A config's probe words suit one corpus (``' thou'`` for Romeo and
    Juliet); on another they may never occur, which would leave the report's
    neighbour table empty. Probes that never occur are kept (the report flags
    them); the added ones are whole words with a leading space, most frequent
    first, at least 3 letters long.

    Example:
      >>> from jaxembed.text.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> counts_V = np.zeros(enc.n_vocab, int)
      >>> counts_V[enc.encode(" return")] = 9; counts_V[enc.encode(" the")] = 5
      >>> [enc.decode([i]) for i in fill_probes(enc, counts_V, enc.encode(" thou"), want=2)]
      [' thou', ' return', ' the']
    """
    probes = list(probe_ids)
    seen = sum(1 for i in probes if counts_V[i] > 0)
    for token_id in np.argsort(-np.asarray(counts_V), kind="stable"):
        if seen >= want or counts_V[token_id] == 0:
            break
        text = enc.decode_single_token_bytes(int(token_id)).decode("utf-8", errors="replace")
        if int(token_id) not in probes and text.startswith(" ") and text[1:].isalpha() and len(text) > 3:
            probes.append(int(token_id))
            seen += 1
    return probes
