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


#: Neighbours are ranked among tokens seen at least this often in training (see ``neighbor_candidates``).
DEFAULT_MIN_COUNT = 3


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


#: Words ``choose_probes`` does not add: English function words (and their archaic forms),
#: whose neighbours are other function words. A configured probe may still be one (``' the'``).
#: The report shows a probe only if it occurs at least this often in training. More than a
#: candidate needs (``DEFAULT_MIN_COUNT``): on Romeo and Juliet ``' return'`` (4 times) got
#: arbitrary neighbours ('._', ' lovers') at 2.0σ where words seen 50+ times got theirs at 3σ+.
PROBE_MIN_COUNT = 20

FUNCTION_WORDS = frozenset(
    """a about after all also an and any are as at be been but by can could did do does for from had
    has have he her here him his how if in into is it its may me might more must my no not now of on one
    only or other our out own shall she should so some such than that the their them then there these they
    this those to too up upon us was we were what when where which while who why will with would yet you
    your art doth dost hast hath thee thou thine thy ye""".split()
)


def choose_probes(
    enc: tiktoken.Encoding,
    counts_V: np.ndarray,
    probe_ids: Sequence[int],
    want: int = 6,
    min_count: int = PROBE_MIN_COUNT,
) -> tuple[list[int], list[int]]:
    """The probes a run's report shows: configured ones the corpus uses, then its frequent content words.

    A config's probe words suit one corpus (``' thou'`` for Romeo and
    Juliet); on another they may never occur. A probe is kept only if it
    occurs at least ``min_count`` times in training (``PROBE_MIN_COUNT``,
    more than a neighbour candidate needs): a rarer token's row has learned
    too little for its neighbours to teach anything. Then,
    until ``want`` probes are kept, the corpus's most frequent whole words
    are added (a leading space and 3 or more letters, e.g. ``' file'``),
    skipping ``FUNCTION_WORDS``: the neighbours of ``' that'`` are ``' to'``
    and ``' which'`` on any corpus, those of ``' file'`` or ``' night'`` show
    what this corpus is about.

    Args:
      enc: the tokenizer.
      counts_V: how often each token id occurs in the training split.
      probe_ids: the configured probes, in order.
      want: how many probes to show, at least (more if more configured ones occur).
      min_count: the fewest occurrences a probe needs (>= 1).

    Returns:
      ``(probes, dropped)``: the ids to show (configured ones first) and the
      configured ids dropped for occurring fewer than ``min_count`` times.

    Raises:
      ValueError: ``min_count`` is not a positive integer.

    Example:
      >>> from jaxembed.text.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> counts_V = np.zeros(enc.n_vocab, int)
      >>> for word, n in [(" the", 90), (" file", 9), (" with", 8), (" returns", 5), (" art", 2)]:
      ...     counts_V[enc.encode(word)] = n
      >>> probes, dropped = choose_probes(enc, counts_V, enc.encode(" thou") + enc.encode(" the"), 3, min_count=3)
      >>> [enc.decode([i]) for i in probes], [enc.decode([i]) for i in dropped]
      ([' the', ' file', ' returns'], [' thou'])
    """
    check_positive_int(min_count, "min_count")
    counts_V = np.asarray(counts_V)
    configured = list(dict.fromkeys(int(i) for i in probe_ids))
    probes = [i for i in configured if counts_V[i] >= min_count]
    dropped = [i for i in configured if counts_V[i] < min_count]
    for token_id in np.argsort(-counts_V, kind="stable"):  # most frequent first, ties by id
        if len(probes) >= want or counts_V[token_id] < min_count:
            break
        text = enc.decode_single_token_bytes(int(token_id)).decode("utf-8", errors="replace")
        word = text[1:]
        if (
            int(token_id) not in configured
            and text.startswith(" ")
            and word.isalpha()
            and len(word) >= 3
            and word.lower() not in FUNCTION_WORDS
        ):
            probes.append(int(token_id))
    return probes, dropped


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
    ``nearest_neighbors``). A probe seen fewer than ``min_count`` times gets
    an empty list: a row that was never (or hardly ever) an input has not
    learned anything about its token, so ranking it would say nothing
    (``format_neighbors`` prints a note instead). The probe rule is the
    candidate rule.

    Example:
      >>> table_VxD = np.array([[5, 1, 0], [5, 0.9, 0.1], [5, 0, 1], [5, -1, 0]])
      >>> counts_V = np.array([0, 3, 3, 3])  # token 0 never occurs
      >>> [[(i, round(cos, 2)) for i, cos in row] for row in rank_neighbors(table_VxD, counts_V, [1, 0], k=2)]
      [[(2, -0.22), (3, -0.8)], []]
    """
    candidates_C = neighbor_candidates(counts_V, min_count)
    counts_V = np.asarray(counts_V)
    query_ids = [int(q) for q in np.asarray(query_ids).reshape(-1)]
    ranked = iter(
        nearest_neighbors(table_VxD, [q for q in query_ids if counts_V[q] >= min_count], k, candidates_C, centre=True)
    )
    return [next(ranked) if counts_V[q] >= min_count else [] for q in query_ids]


def sigmas_above(cosine: float, baseline: tuple[float, float]) -> float | None:
    """How many standard deviations of the random-pair cosine ``cosine`` lies above its mean.

    ``baseline`` is ``random_pair_cosine(...)``'s ``(mean, std)``; the
    answer is ``(cosine - mean) / std``, or ``None`` when the std is 0 or
    not finite (fewer than two candidates). A cosine cannot exceed 1, so no
    neighbour stands more than ``(1 - mean) / std`` above the baseline: the
    wider the random-pair spread, the lower that ceiling.

    Example:
      >>> round(sigmas_above(0.95, (0.01, 0.3)), 2), sigmas_above(0.5, (float("nan"), float("nan")))
      (3.13, None)
    """
    mean, std = baseline
    if not (np.isfinite(mean) and np.isfinite(std)) or std <= 0:
        return None
    return float((cosine - mean) / std)


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


def blank_token_share(enc: tiktoken.Encoding, counts_V: np.ndarray) -> float:
    r"""The share of the counted tokens that are only whitespace (spaces, tabs, line breaks).

    Args:
      enc: the tokenizer whose ids ``counts_V`` counts.
      counts_V: how often each token id occurs (e.g. ``TrainResult.token_counts()``).

    Returns:
      A fraction in [0, 1]; 0.0 when nothing is counted.

    Example:
      >>> from jaxembed.text.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> counts_V = np.zeros(enc.n_vocab, np.int64)
      >>> counts_V[enc.encode(" the cat\n\n")] += 1  # ' the', ' cat', '\n\n'
      >>> round(blank_token_share(enc, counts_V), 3)
      0.333
    """
    seen = np.flatnonzero(counts_V)
    blank = [i for i in seen if not enc.decode_single_token_bytes(int(i)).strip()]
    total = int(counts_V.sum())
    return int(counts_V[blank].sum()) / total if total else 0.0


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
    enc: tiktoken.Encoding,
    query_ids: Sequence[int],
    neighbors: Neighbors,
    counts_V: np.ndarray | None = None,
    *,
    baseline: tuple[float, float] | None = None,
    min_count: int = DEFAULT_MIN_COUNT,
) -> str:
    """A plain-text table, one probe per line: ``' thou' -> ' art' 0.61, ...``.

    With ``counts_V`` (training counts), a probe seen fewer than
    ``min_count`` times gets a note instead of neighbours (``rank_neighbors``
    ranks none for it). With ``baseline`` (``random_pair_cosine``'s mean and
    std), each cosine is followed by ``sigmas_above`` it: ``0.95 (3.1σ)``.

    Example:
      >>> from jaxembed.text.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> print(format_neighbors(enc, [14210], [[(1242, 0.612), (19338, 0.58)]]))
      ' thou' -> ' art' 0.61, ' hast' 0.58
      >>> print(format_neighbors(enc, [14210], [[(1242, 0.612)]], baseline=(0.01, 0.2)))
      ' thou' -> ' art' 0.61 (3.0σ)
      >>> counts_V = np.zeros(enc.n_vocab, int)
      >>> print(format_neighbors(enc, [14210], [[]], counts_V))
      ' thou' -> (never in the training text: its row was never an input, so it has no meaningful neighbours)
    """
    labels = [token_label(enc, q) for q in query_ids]
    width = max(map(len, labels), default=0)
    lines = []
    for query, label, row in zip(query_ids, labels, neighbors, strict=True):
        if counts_V is not None and counts_V[query] < min_count:
            text = f"({probe_note(int(counts_V[query]), min_count)})"
        else:
            parts = []
            for i, cos in row:
                sigma = None if baseline is None else sigmas_above(cos, baseline)
                parts.append(f"{token_label(enc, i)} {cos:.2f}" + ("" if sigma is None else f" ({sigma:.1f}σ)"))
            text = ", ".join(parts)
        lines.append(f"{label:<{width}} -> {text}")
    return "\n".join(lines)


UNSEEN_NOTE = "never in the training text: its row was never an input, so it has no meaningful neighbours"


def probe_note(count: int, min_count: int = DEFAULT_MIN_COUNT) -> str:
    """Why a probe seen ``count`` < ``min_count`` times has no neighbours listed.

    Example:
      >>> probe_note(2)
      'seen only 2 times in training (fewer than 3): its row has learned too little to have meaningful neighbours'
    """
    if count == 0:
        return UNSEEN_NOTE
    times = "once" if count == 1 else f"{count} times"
    return (
        f"seen only {times} in training (fewer than {min_count}): its row has learned too little to have "
        "meaningful neighbours"
    )


def pca(vectors_NxD: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Projects rows onto their top ``k`` principal axes, with the variance each explains.

    Args:
      vectors_NxD: the rows to project.
      k: how many axes (>= 1); 3 shows GPT-2's position helix, which two axes flatten.

    Returns:
      ``(points_NxK, explained_K)``: the projection and the fraction of the
      total variance along each axis (zero columns past the data's rank).

    Raises:
      ValueError: ``k`` is not a positive integer.

    Example:
      >>> points_Nx2, explained_2 = pca(np.array([[0.0, 0], [2, 0], [1, 0.1], [1, -0.1]]))
      >>> explained_2.round(3).tolist()
      [0.99, 0.01]
      >>> pca(np.eye(4), k=3)[0].shape
      (4, 3)
    """
    check_positive_int(k, "k")
    x_NxD = np.asarray(vectors_NxD, dtype=np.float64)
    x_NxD = x_NxD - x_NxD.mean(axis=0)
    if x_NxD.shape[0] > x_NxD.shape[1]:
        # More rows than features (GPT-2's 1,024 x 768 positions): the eigenvectors of the D x D
        # scatter matrix are the principal axes, several times faster than an SVD of the rows.
        eig_R, v_DxR = np.linalg.eigh(x_NxD.T @ x_NxD)
        s_R, vt_RxD = np.sqrt(np.clip(eig_R[::-1], 0, None)), v_DxR[:, ::-1].T
    else:
        _, s_R, vt_RxD = np.linalg.svd(x_NxD, full_matrices=False)
    # SVD signs are arbitrary; pin each axis so its largest-|loading| entry is
    # positive, which also makes the result independent of row order.
    signs_R = np.sign(vt_RxD[np.arange(len(vt_RxD)), np.abs(vt_RxD).argmax(axis=1)])
    points_NxR = x_NxD @ (vt_RxD * np.where(signs_R == 0, 1, signs_R)[:, None]).T
    kept = min(k, points_NxR.shape[1])
    points_NxK = np.zeros((len(x_NxD), k))
    points_NxK[:, :kept] = points_NxR[:, :kept]
    var_R = s_R**2
    explained_K = np.zeros(k)
    explained_K[: min(k, len(var_R))] = var_R[:k] / var_R.sum() if var_R.sum() > 0 else 0
    return points_NxK, explained_K


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


#: The least rise (nats) above the best validation loss that can count as overfitting.
OVERFIT_MARGIN = 0.02
#: How many evaluations in a row, up to the last, must lie above the best by the margin.
OVERFIT_MIN_EVALS = 3
#: The margin is at least this many times the evaluation noise (``val_loss_noise``).
OVERFIT_NOISE_FACTOR = 2.0


def val_loss_noise(losses: Sequence[float]) -> float | None:
    """How much a validation loss jitters from one evaluation to the next, late in a run (nats).

    The standard deviation of the change between consecutive evaluations in
    the second half of ``losses``, divided by sqrt(2) (the change of two
    independent draws has sqrt(2) times their spread). Taking the standard
    deviation, not the mean size, of the changes leaves out a steady trend:
    a curve that rises or falls by the same step each time has no noise.

    Returns:
      The noise, or ``None`` with fewer than 3 changes to estimate it from
      (fewer than 7 evaluations).

    Example:
      >>> round(val_loss_noise([10.8, 6.0, 5.50, 5.54, 5.49, 5.55, 5.50, 5.53]), 4)
      0.0402
      >>> val_loss_noise([10.8, 6.0, 5.5]) is None
      True
    """
    late = np.asarray(losses, dtype=np.float64)[len(losses) // 2 :]
    changes = np.diff(late)
    if len(changes) < 3:
        return None
    return float(np.std(changes, ddof=1) / np.sqrt(2))


def val_loss_summary(
    metrics: Sequence[dict],
    margin: float = OVERFIT_MARGIN,
    min_evals: int = OVERFIT_MIN_EVALS,
    noise_factor: float = OVERFIT_NOISE_FACTOR,
) -> dict:
    """The validation-loss numbers of a run's metrics rows, and whether it overfits.

    One evaluation above the best is noise until more agree: the same fixed
    validation batches scored at two nearby steps differ by the optimiser's
    jitter. So the run counts as overfitting from its best validation step
    only with evidence:

    1. the last ``min_evals`` evaluations all lie more than the margin above
       the best (a sustained rise, up to the end of the run), where the
       margin is the larger of ``margin`` nats and ``noise_factor`` times
       ``val_loss_noise`` (the run's own evaluation-to-evaluation jitter);
    2. the training loss at the last row is below the training loss at the
       best step (validation worsens while training still improves; if both
       rose, training went wrong, which is not overfitting).

    Args:
      metrics: ``metrics.jsonl`` rows: ``step``, and ``val_loss`` and/or ``train_loss``.
      margin: the least rise counted, in nats.
      min_evals: evaluations in a row, up to the last, that must clear the margin.
      noise_factor: the margin's multiple of the evaluation noise.

    Returns:
      ``{"val_loss_initial", "val_loss_final", "val_loss_best", "val_loss_best_step",
      "overfitting_from_step", "val_evaluations", "val_loss_noise", "overfit_margin",
      "overfit_margin_floor", "overfit_noise_factor", "overfit_evals_above", "overfit_min_evals"}``:
      the first, last and
      lowest finite validation losses, the step of the lowest (earliest on ties), the best step
      if the run overfits else ``None``; then the rule's inputs: how many finite evaluations,
      the noise (``None`` if too few to estimate), the margin used, ``margin``, ``noise_factor``,
      how many evaluations in a row up to the last lie above the best by the margin, and
      ``min_evals``.
      Losses are ``None`` without validation rows.

    Example:
      >>> rows = [{"step": 0, "val_loss": 10.8}, {"step": 50, "train_loss": 6.0, "val_loss": 6.2}]
      >>> rows += [{"step": s, "train_loss": 5.0, "val_loss": v} for s, v in [(100, 6.4), (150, 6.5), (200, 6.6)]]
      >>> summary = val_loss_summary(rows)
      >>> summary["val_loss_best_step"], summary["overfit_evals_above"], summary["overfitting_from_step"]
      (50, 3, 50)
      >>> val_loss_summary(rows[:3])["overfitting_from_step"] is None  # one evaluation above: not yet
      True
    """
    val = [(int(m["step"]), float(m["val_loss"])) for m in metrics if np.isfinite(m.get("val_loss") or np.nan)]
    rule = {
        "overfit_margin_floor": float(margin),
        "overfit_noise_factor": float(noise_factor),
        "overfit_min_evals": int(min_evals),
    }
    if not val:
        return (
            dict.fromkeys(["val_loss_initial", "val_loss_final", "val_loss_best", "val_loss_best_step"])
            | {"overfitting_from_step": None, "val_evaluations": 0, "val_loss_noise": None}
            | {"overfit_margin": float(margin), "overfit_evals_above": 0}
            | rule
        )
    best_step, best = min(val, key=lambda sv: (sv[1], sv[0]))
    noise = val_loss_noise([v for _, v in val])
    used = max(float(margin), noise_factor * noise) if noise is not None else float(margin)
    above = 0  # evaluations in a row, counted back from the last, above the best by the margin
    for _, loss in reversed(val):
        if loss - best <= used:
            break
        above += 1
    train = {int(m["step"]): float(m["train_loss"]) for m in metrics if m.get("train_loss") is not None}
    last_train = train[max(train)] if train else None
    overfitting = above >= min_evals and best_step in train and last_train < train[best_step]
    return {
        "val_loss_initial": val[0][1],
        "val_loss_final": val[-1][1],
        "val_loss_best": best,
        "val_loss_best_step": best_step,
        "overfitting_from_step": best_step if overfitting else None,
        "val_evaluations": len(val),
        "val_loss_noise": noise,
        "overfit_margin": used,
        "overfit_evals_above": above,
        **rule,
    }
