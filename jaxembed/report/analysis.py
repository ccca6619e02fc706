"""What the embeddings learned, as numbers: counts, the tokens to probe, cosine, neighbours, PCA.

Plain numpy in, plain numpy out (pull arrays off the device with
``np.asarray`` first), so the analysis runs on a checkpoint without JAX and is
easy to check against a reference. ``jaxembed.report.writer`` draws these numbers.

Token text is shown repr-style (``' thou'``, ``'\\n'``) because GPT-2 tokens
carry leading spaces and newlines that would otherwise be invisible.

Example:
  >>> import numpy as np
  >>> from jaxembed.text.tokenizer import get_encoding
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

from jaxembed.errors import InvalidArgumentError, check_int, check_positive_int

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
    check_int(n, "n", minimum=0)
    counts_V = np.asarray(counts_V)
    # A stable sort on -count keeps equal counts in id order: deterministic.
    order_V = np.argsort(-counts_V, kind="stable")
    return order_V[: min(n, int(np.count_nonzero(counts_V)))]


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


#: Neighbours are ranked among tokens seen at least this often in training (see ``neighbor_candidates``).
DEFAULT_MIN_COUNT = 3


def neighbor_candidates(counts_V: np.ndarray, min_count: int = DEFAULT_MIN_COUNT) -> np.ndarray:
    """The ids neighbours are ranked among: tokens seen at least ``min_count`` times in training, by id.

    The one candidate rule that the run report and ``jaxembed neighbors``
    share, so they rank among the same tokens. Rows of tokens never seen as
    input only learn "never predict me" (with a tied output head they all move
    the same way), and rows of tokens seen once or twice barely move from
    their random start: neither says anything about its token.

    Args:
      counts_V: how often each token id occurs in the training split.
      min_count: the fewest occurrences a candidate needs (>= 1).

    Returns:
      ``ids_C``, int64, ascending.

    Raises:
      ValueError: ``min_count`` is not a positive integer.

    Example:
      >>> neighbor_candidates(np.array([5, 0, 3, 2, 9]), min_count=3).tolist()
      [0, 2, 4]
    """
    check_positive_int(min_count, "min_count")
    return np.flatnonzero(np.asarray(counts_V) >= min_count).astype(np.int64)


def _unit_rows(x_NxD: np.ndarray) -> np.ndarray:
    norms_N = np.linalg.norm(x_NxD, axis=1, keepdims=True)
    return x_NxD / np.where(norms_N > 0, norms_N, 1)  # zero rows stay zero: cosine 0 with everything


def _pool(table_VxD: np.ndarray, candidate_ids) -> np.ndarray:
    if candidate_ids is None:
        return np.arange(len(table_VxD))
    return np.unique(np.asarray(candidate_ids, dtype=np.int64))


def nearest_neighbors(
    table_VxD: np.ndarray,
    query_ids: Sequence[int],
    k: int = 5,
    candidate_ids: np.ndarray | None = None,
    *,
    centre: bool = False,
) -> Neighbors:
    """For each query, the ``k`` most cosine-similar candidate rows as ``(id, cosine)``.

    The query itself is excluded. Pass ``candidate_ids`` (e.g. from
    ``neighbor_candidates``) to rank only those. Ties go to the smaller id.

    With ``centre=True`` the mean of the candidate rows is subtracted from
    the queries and the candidates before the cosine. Trained token vectors
    share a common direction (raw cosines of random pairs are far above 0),
    so raw rankings mostly measure that shared direction; centred cosines
    measure what is specific to each token, with random pairs near 0 (see
    ``random_pair_cosine``).

    Example:
      >>> table_VxD = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [1, 0.2]])
      >>> [[(i, round(cos, 3)) for i, cos in row]
      ...  for row in nearest_neighbors(table_VxD, [0], k=2, candidate_ids=[1, 2])]
      [[(1, 0.994), (2, 0.0)]]

      Rows sharing a large common part all look alike until it is removed:

      >>> shared_VxD = np.array([[5, 1, 0], [5, 0.9, 0.1], [5, 0, 1], [5, -1, 0]])
      >>> for centre in (False, True):
      ...     print([(i, round(cos, 2)) for i, cos in
      ...            nearest_neighbors(shared_VxD, [0], k=3, candidate_ids=[1, 2, 3], centre=centre)[0]])
      [(1, 1.0), (2, 0.96), (3, 0.92)]
      [(1, 1.0), (2, -0.28), (3, -0.76)]
    """
    table_VxD = np.asarray(table_VxD)
    dtype = np.result_type(table_VxD.dtype, np.float32)
    pool_C = _pool(table_VxD, candidate_ids)
    queries_Q = np.asarray(query_ids, dtype=np.int64).reshape(-1)
    # Only the candidate and query rows are touched: no copy of a 50257 x D table.
    cand_CxD = table_VxD[pool_C].astype(dtype)
    query_QxD = table_VxD[queries_Q].astype(dtype)
    if centre and len(pool_C):
        mean_D = cand_CxD.mean(axis=0)
        cand_CxD, query_QxD = cand_CxD - mean_D, query_QxD - mean_D
    sims_QxC = np.clip(_unit_rows(query_QxD) @ _unit_rows(cand_CxD).T, -1, 1)
    result = []
    for query, sims_C in zip(queries_Q, sims_QxC):
        keep_C = pool_C != query
        ids_C, kept_C = pool_C[keep_C], sims_C[keep_C]
        order = np.lexsort((ids_C, -kept_C))[:k]
        result.append([(int(ids_C[i]), float(kept_C[i])) for i in order])
    return result


def rank_neighbors(
    table_VxD: np.ndarray,
    counts_V: np.ndarray,
    query_ids: Sequence[int],
    k: int = 5,
    min_count: int = DEFAULT_MIN_COUNT,
) -> Neighbors:
    """Neighbours as the report and ``jaxembed neighbors`` show them: centred cosine among the candidates.

    Candidates are ``neighbor_candidates(counts_V, min_count)``; cosines are
    taken after subtracting the candidates' mean row (``centre=True`` in
    ``nearest_neighbors``). A probe that never occurs in the training text
    gets an empty list: its row was never an input, so ranking it would say
    nothing about the token (``format_neighbors`` prints a note instead).

    Example:
      >>> table_VxD = np.array([[5, 1, 0], [5, 0.9, 0.1], [5, 0, 1], [5, -1, 0]])
      >>> counts_V = np.array([0, 3, 3, 3])  # token 0 never occurs
      >>> [[(i, round(cos, 2)) for i, cos in row] for row in rank_neighbors(table_VxD, counts_V, [1, 0], k=2)]
      [[(2, -0.22), (3, -0.8)], []]
    """
    candidates_C = neighbor_candidates(counts_V, min_count)
    counts_V = np.asarray(counts_V)
    query_ids = [int(q) for q in np.asarray(query_ids).reshape(-1)]
    ranked = iter(nearest_neighbors(table_VxD, [q for q in query_ids if counts_V[q] > 0], k, candidates_C, centre=True))
    return [next(ranked) if counts_V[q] > 0 else [] for q in query_ids]


def random_pair_cosine(
    table_VxD: np.ndarray, candidate_ids: np.ndarray | None = None, *, centre: bool = False
) -> tuple[float, float]:
    """Mean and standard deviation of the cosine of a random pair of distinct candidate rows.

    The baseline a neighbour's cosine should be read against: exact over all
    ``C * (C - 1)`` ordered pairs, without forming the ``C x C`` matrix (the
    sum over pairs of ``u_i . u_j`` is ``|sum u|^2 - sum |u|^2`` for unit rows
    ``u``, and of its square ``|U^T U|_F^2 - sum |u|^4``). ``centre`` as in
    ``nearest_neighbors`` (the candidates' own mean is subtracted).

    Returns:
      ``(mean, std)``; ``(nan, nan)`` for fewer than two candidates.

    Example:
      >>> table_VxD = np.array([[1.0, 0], [0, 1], [1, 1]])
      >>> [round(x, 3) for x in random_pair_cosine(table_VxD)]
      [0.471, 0.333]
    """
    x_CxD = np.asarray(table_VxD, dtype=np.float64)[_pool(table_VxD, candidate_ids)]
    n = len(x_CxD)
    if n < 2:
        return float("nan"), float("nan")
    if centre:
        x_CxD = x_CxD - x_CxD.mean(axis=0)
    u_CxD = _unit_rows(x_CxD)
    sq_C = (u_CxD**2).sum(axis=1)  # 1, or 0 for a zero row
    pairs = n * (n - 1)
    mean = (np.sum(u_CxD.sum(axis=0) ** 2) - sq_C.sum()) / pairs
    mean_sq = (np.sum((u_CxD.T @ u_CxD) ** 2) - np.sum(sq_C**2)) / pairs
    return float(mean), float(np.sqrt(max(mean_sq - mean**2, 0.0)))


def readable_bytes(raw: bytes) -> str:
    r"""Bytes as text, with each run of bytes that is not valid UTF-8 shown as hex in ``⟨...⟩``.

    GPT-2 splits some characters across tokens (``'’'`` is ``b'\xe2\x80'`` +
    ``b'\x99'``), so a token on its own can hold part of a character.

    Example:
      >>> print(readable_bytes(b" caf\xc3\xa9"), readable_bytes(b"\xe2\x80"), readable_bytes(b"a\x99b"))
       café ⟨e2 80⟩ a⟨99⟩b
    """
    parts = []
    while raw:
        try:
            parts.append(raw.decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            parts.append(raw[: e.start].decode("utf-8"))
            parts.append("⟨" + " ".join(f"{b:02x}" for b in raw[e.start : e.end]) + "⟩")
            raw = raw[e.end :]
    # Adjacent invalid runs read as one group: ⟨e2⟩⟨80⟩ -> ⟨e2 80⟩.
    return "".join(parts).replace("⟩⟨", " ")


def token_label(enc: tiktoken.Encoding, token_id: int) -> str:
    r"""Token text repr-style, so spaces and newlines show; partial UTF-8 as ``⟨hex bytes⟩``.

    Every label in reports, plots, ``jaxembed neighbors`` and the projector
    metadata comes from here, so they all spell a token the same way.

    Example:
      >>> from jaxembed.text.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> print(token_label(enc, 14210), token_label(enc, 198), token_label(enc, 447))
      ' thou' '\n' '⟨e2 80⟩'
    """
    return repr(readable_bytes(enc.decode_single_token_bytes(int(token_id))))


def resolve_tokens(enc: tiktoken.Encoding, words: Sequence[str]) -> list[int]:
    """Maps each word to its single GPT-2 token id.

    Raises:
      ValueError: a word is not exactly one token; the message names its ids
        and, where a leading space fixes it, suggests that spelling.

    Example:
      >>> from jaxembed.text.tokenizer import get_encoding
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
        raise InvalidArgumentError(
            f"{word!r} encodes to {len(encoded)} GPT-2 tokens {encoded} ({pieces}), not 1; {hint}"
        )
    return ids


def format_neighbors(
    enc: tiktoken.Encoding, query_ids: Sequence[int], neighbors: Neighbors, counts_V: np.ndarray | None = None
) -> str:
    """A plain-text table, one probe per line: ``' thou' -> ' art' 0.61, ...``.

    With ``counts_V`` (training counts), a probe that never occurs in the
    training text gets a note instead of neighbours.

    Example:
      >>> from jaxembed.text.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> print(format_neighbors(enc, [14210], [[(1242, 0.612), (19338, 0.58)]]))
      ' thou' -> ' art' 0.61, ' hast' 0.58
      >>> counts_V = np.zeros(enc.n_vocab, int)
      >>> print(format_neighbors(enc, [14210], [[]], counts_V))
      ' thou' -> (never in the training text: its row was never an input, so it has no meaningful neighbours)
    """
    labels = [token_label(enc, q) for q in query_ids]
    width = max(map(len, labels), default=0)
    lines = []
    for query, label, row in zip(query_ids, labels, neighbors, strict=True):
        if counts_V is not None and counts_V[query] == 0:
            text = f"({UNSEEN_NOTE})"
        else:
            text = ", ".join(f"{token_label(enc, i)} {cos:.2f}" for i, cos in row)
        lines.append(f"{label:<{width}} -> {text}")
    return "\n".join(lines)


UNSEEN_NOTE = "never in the training text: its row was never an input, so it has no meaningful neighbours"


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


def position_locality(position_LxD: np.ndarray) -> float:
    """How much more alike nearby positions are than distant ones, in cosine.

    Mean cosine between adjacent positions (``|i - j| = 1``) minus mean cosine
    between positions at least ``L / 2`` apart (``|i - j| >= L / 2``). About
    0 for a random table or for one where every position holds the same
    vector; clearly positive when the table has learned an order.

    Args:
      position_LxD: the positional table, ``L >= 2`` rows.

    Raises:
      ValueError: fewer than 2 positions.

    Example:
      >>> position_LxD = np.array([[1.0, 0], [1, 0.2], [0.2, 1], [0, 1]])
      >>> round(position_locality(position_LxD), 3)  # adjacent 0.782, far 0.131
      0.651
    """
    position_LxD = np.asarray(position_LxD, dtype=np.float64)
    if position_LxD.ndim != 2 or len(position_LxD) < 2:
        raise InvalidArgumentError(
            f"position_LxD has shape {position_LxD.shape}: need a 2-D table with at least 2 positions."
        )
    sims_LxL = position_similarity(position_LxD)
    length = len(position_LxD)
    gap_LxL = np.abs(np.arange(length)[:, None] - np.arange(length)[None, :])
    return float(sims_LxL[gap_LxL == 1].mean() - sims_LxL[gap_LxL >= length / 2].mean())


#: Validation loss must rise by more than this (nats) above its best for ``val_loss_summary`` to call overfitting.
OVERFIT_MARGIN = 0.02


def val_loss_summary(metrics: Sequence[dict], margin: float = OVERFIT_MARGIN) -> dict:
    """The validation-loss numbers of a run's metrics rows, and whether it overfits.

    The run counts as overfitting from the best validation step when that
    step is not the last evaluation, the last validation loss is more than
    ``margin`` nats above the best, and the training loss at the last row is
    below the training loss at the best step (validation worsens while
    training still improves).

    Returns:
      ``{"val_loss_initial", "val_loss_final", "val_loss_best", "val_loss_best_step",
      "overfitting_from_step"}``: the first, last and lowest finite validation
      losses, the step of the lowest (earliest on ties), and the best step if
      the run overfits else ``None``. Losses are ``None`` without validation rows.

    Example:
      >>> rows = [{"step": 0, "val_loss": 10.8}, {"step": 50, "train_loss": 6.0, "val_loss": 6.2},
      ...         {"step": 100, "train_loss": 5.0, "val_loss": 6.4}]
      >>> val_loss_summary(rows)["val_loss_best_step"], val_loss_summary(rows)["overfitting_from_step"]
      (50, 50)
    """
    val = [(int(m["step"]), float(m["val_loss"])) for m in metrics if np.isfinite(m.get("val_loss") or np.nan)]
    if not val:
        return dict.fromkeys(["val_loss_initial", "val_loss_final", "val_loss_best", "val_loss_best_step"]) | {
            "overfitting_from_step": None
        }
    best_step, best = min(val, key=lambda sv: (sv[1], sv[0]))
    train = {int(m["step"]): float(m["train_loss"]) for m in metrics if m.get("train_loss") is not None}
    last_train = train[max(train)] if train else None
    overfitting = (
        best_step < val[-1][0] and val[-1][1] - best > margin and best_step in train and last_train < train[best_step]
    )
    return {
        "val_loss_initial": val[0][1],
        "val_loss_final": val[-1][1],
        "val_loss_best": best,
        "val_loss_best_step": best_step,
        "overfitting_from_step": best_step if overfitting else None,
    }
