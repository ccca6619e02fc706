"""What the embeddings learned, as numbers: counts, cosine, neighbours, PCA.

Plain numpy in, plain numpy out (pull arrays off the device with
``np.asarray`` first), so the analysis runs on a checkpoint without JAX and is
easy to check against a reference. ``jaxembed.report`` draws these numbers.

Token text is shown repr-style (``' thou'``, ``'\\n'``) because GPT-2 tokens
carry leading spaces and newlines that would otherwise be invisible.

Example:
  >>> import numpy as np
  >>> from jaxembed.tokenizer import get_encoding
  >>> enc = get_encoding("gpt2")
  >>> table_VxD = np.zeros((enc.n_vocab, 4), np.float32)
  >>> romeo, juliet, thou = resolve_tokens(enc, [" Romeo", " Juliet", " thou"])
  >>> table_VxD[[romeo, juliet, thou]] = [[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0]]
  >>> # Rank only tokens that occur in the training text (see nearest_neighbors).
  >>> nn = nearest_neighbors(table_VxD, [romeo], k=2, candidate_ids=[juliet, thou])
  >>> print(format_neighbors(enc, [romeo], nn))
  ' Romeo' -> ' Juliet' 0.99, ' thou' 0.00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tiktoken

Neighbors = list[list[tuple[int, float]]]


def most_frequent(counts_V: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` ids with the largest counts, most frequent first, ties by smaller id.

    Ids that never occur are never returned, so fewer than ``n`` may come back.

    Example:
      >>> most_frequent(np.array([0, 2, 0, 1, 0, 2]), n=5).tolist()
      [1, 5, 3]
    """
    counts_V = np.asarray(counts_V)
    # A stable sort on -count keeps equal counts in id order: deterministic.
    order_V = np.argsort(-counts_V, kind="stable")
    return order_V[: min(n, int(np.count_nonzero(counts_V)))]


def cosine_similarity(table_VxD: np.ndarray, query_ids: Sequence[int]) -> np.ndarray:
    """Returns ``sims_QxV``: cosine of each query row with every row of the table.

    All-zero rows have similarity 0 to everything (not NaN).

    Example:
      >>> cosine_similarity(np.array([[1.0, 0], [2, 2], [0, 0]]), [0]).round(3).tolist()
      [[1.0, 0.707, 0.0]]
    """
    table_VxD = np.asarray(table_VxD)
    table_VxD = table_VxD.astype(np.result_type(table_VxD.dtype, np.float32), copy=False)
    query_ids = np.asarray(query_ids, dtype=np.int64).reshape(-1)
    norms_V = np.linalg.norm(table_VxD, axis=1)
    # Dividing the dot products (instead of normalising the table) avoids
    # copying a 50257 x D table; a zero norm becomes 1 so zero rows give 0.
    safe_V = np.where(norms_V > 0, norms_V, 1).astype(table_VxD.dtype)
    sims_QxV = (table_VxD[query_ids] @ table_VxD.T) / (safe_V[query_ids, None] * safe_V[None, :])
    return np.clip(sims_QxV, -1, 1)


def nearest_neighbors(
    table_VxD: np.ndarray,
    query_ids: Sequence[int],
    k: int = 5,
    candidate_ids: np.ndarray | None = None,
) -> Neighbors:
    """For each query, the ``k`` most cosine-similar rows as ``(id, cosine)``.

    The query itself is excluded. Pass ``candidate_ids`` (e.g. the ids that
    occur in the corpus) to rank only those: with a tied output head, the rows
    of tokens absent from training are all pushed the same way (the model
    learns never to predict them), so they say nothing about their token.
    Ties go to the smaller id.

    Example:
      >>> table_VxD = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [1, 0.2]])
      >>> [[(i, round(cos, 3)) for i, cos in row]
      ...  for row in nearest_neighbors(table_VxD, [0], k=2, candidate_ids=[1, 2])]
      [[(1, 0.994), (2, 0.0)]]
    """
    sims_QxV = cosine_similarity(table_VxD, query_ids)
    vocab = np.arange(sims_QxV.shape[1])
    pool_C = vocab if candidate_ids is None else np.unique(np.asarray(candidate_ids, dtype=np.int64))
    result = []
    for query, sims_V in zip(np.asarray(query_ids).reshape(-1), sims_QxV):
        ids_C = pool_C[pool_C != query]
        order = np.lexsort((ids_C, -sims_V[ids_C]))[:k]
        result.append([(int(ids_C[i]), float(sims_V[ids_C[i]])) for i in order])
    return result


def token_label(enc: tiktoken.Encoding, token_id: int) -> str:
    r"""Token text repr-style, so spaces and newlines show; bytes if not UTF-8.

    Example:
      >>> from jaxembed.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> print(token_label(enc, 14210), token_label(enc, 198), token_label(enc, 447))
      ' thou' '\n' b'\xe2\x80'
    """
    raw = enc.decode_single_token_bytes(int(token_id))
    try:
        return repr(raw.decode("utf-8"))
    except UnicodeDecodeError:  # GPT-2 splits some characters across tokens.
        return repr(raw)


def resolve_tokens(enc: tiktoken.Encoding, words: Sequence[str]) -> list[int]:
    """Maps each word to its single GPT-2 token id.

    Raises:
      ValueError: a word is not exactly one token; the message names its ids
        and, where a leading space fixes it, suggests that spelling.

    Example:
      >>> from jaxembed.tokenizer import get_encoding
      >>> resolve_tokens(get_encoding("gpt2"), [" Romeo", " thou"])
      [43989, 14210]
    """
    ids = []
    for word in words:
        encoded = enc.encode(word, allowed_special={"<|endoftext|>"})
        if len(encoded) == 1:
            ids.append(encoded[0])
            continue
        if not word.startswith(" ") and len(enc.encode(" " + word)) == 1:
            hint = f"did you mean {' ' + word!r} with a leading space?"
        elif word.startswith(" ") and word.strip() and len(enc.encode(word.lstrip(" "))) == 1:
            hint = f"did you mean {word.lstrip(' ')!r} without the leading space?"
        else:
            hint = "choose a word that GPT-2 keeps whole (most common words need a leading space)."
        pieces = " + ".join(token_label(enc, i) for i in encoded) or "nothing"
        raise ValueError(f"{word!r} encodes to {len(encoded)} GPT-2 tokens {encoded} ({pieces}), not 1; {hint}")
    return ids


def format_neighbors(enc: tiktoken.Encoding, query_ids: Sequence[int], neighbors: Neighbors) -> str:
    """A plain-text table, one probe per line: ``' thou' -> ' art' 0.61, ...``.

    Example:
      >>> from jaxembed.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> print(format_neighbors(enc, [14210], [[(1242, 0.612), (19338, 0.58)]]))
      ' thou' -> ' art' 0.61, ' hast' 0.58
    """
    labels = [token_label(enc, q) for q in query_ids]
    width = max(map(len, labels), default=0)
    return "\n".join(
        f"{label:<{width}} -> " + ", ".join(f"{token_label(enc, i)} {cos:.2f}" for i, cos in row)
        for label, row in zip(labels, neighbors, strict=True)
    )


def pca(vectors_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projects rows onto their top two principal axes, with the variance each explains.

    Returns:
      ``(points_Nx2, explained_2)``: the projection and the fraction of the
      total variance along each axis.

    Example:
      >>> points_Nx2, explained_2 = pca(np.array([[0.0, 0], [2, 0], [1, 0.1], [1, -0.1]]))
      >>> explained_2.round(3).tolist()
      [0.99, 0.01]
    """
    x_NxD = np.asarray(vectors_NxD, dtype=np.float64)
    x_NxD = x_NxD - x_NxD.mean(axis=0)
    _, s_K, vt_KxD = np.linalg.svd(x_NxD, full_matrices=False)
    # SVD signs are arbitrary; pin each axis so its largest-|loading| entry is
    # positive, which also makes the result independent of row order.
    signs_K = np.sign(vt_KxD[np.arange(len(vt_KxD)), np.abs(vt_KxD).argmax(axis=1)])
    points_NxK = x_NxD @ (vt_KxD * np.where(signs_K == 0, 1, signs_K)[:, None]).T
    points_Nx2 = np.zeros((len(x_NxD), 2))
    points_Nx2[:, : min(2, points_NxK.shape[1])] = points_NxK[:, :2]
    var_K = s_K**2
    explained_2 = np.zeros(2)
    explained_2[: min(2, len(var_K))] = var_K[:2] / var_K.sum() if var_K.sum() > 0 else 0
    return points_Nx2, explained_2


def pca_2d(vectors_NxD: np.ndarray) -> np.ndarray:
    """Projects rows onto their top two principal axes: ``points_Nx2``.

    Example:
      >>> points_Nx2 = pca_2d(np.array([[0.0, 0, 0], [4, 0, 0], [2, 1, 0], [2, -1, 0]]))
      >>> (points_Nx2.round(2) + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0
      [[-2.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, -1.0]]
    """
    return pca(vectors_NxD)[0]


def position_similarity(pos_LxD: np.ndarray) -> np.ndarray:
    """Cosine similarity between every pair of positional embeddings: ``LxL``.

    Example:
      >>> position_similarity(np.array([[1.0, 0], [1, 1]])).round(3).tolist()
      [[1.0, 0.707], [0.707, 1.0]]
    """
    return cosine_similarity(pos_LxD, range(len(pos_LxD)))
