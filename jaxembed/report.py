"""What the embeddings learned: neighbours, PCA, position similarity, plots.

Everything here takes plain numpy arrays (pull them off the device with
``np.asarray`` first) so a report can be built from a checkpoint without JAX.
Plots use ``matplotlib.figure.Figure`` with the Agg canvas directly, never
pyplot, so they work headless and inside notebooks without changing the
backend or leaving figures open. Every file is written atomically.

Token text is shown repr-style (``' thou'``, ``'\\n'``) because GPT-2 tokens
carry leading spaces and newlines that would otherwise be invisible.

Example:
  >>> import numpy as np
  >>> from jaxembed.tokenizer import get_encoding
  >>> from jaxembed.report import format_neighbors, nearest_neighbors, resolve_tokens
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

import contextlib
import math
import os
import pathlib
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import tiktoken

Neighbors = list[list[tuple[int, float]]]
MAX_PCA_LABELS = 60


def token_frequencies(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Returns ``counts_V``: how often each id in ``[0, vocab_size)`` occurs.

    Example:
      >>> token_frequencies(np.array([2, 0, 2]), vocab_size=4).tolist()
      [1, 0, 2, 0]
    """
    ids = np.asarray(ids).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}); got range [{ids.min()}, {ids.max()}].")
    return np.bincount(ids, minlength=vocab_size)


def frequent_token_ids(ids: np.ndarray, n: int, vocab_size: int | None = None) -> np.ndarray:
    """Returns the ``n`` most frequent ids, most frequent first, ties by smaller id.

    Ids that never occur are never returned, so fewer than ``n`` may come back.

    Example:
      >>> frequent_token_ids(np.array([5, 1, 5, 3, 1, 9]), n=3).tolist()
      [1, 5, 3]
    """
    ids = np.asarray(ids).ravel()
    if vocab_size is None:
        vocab_size = int(ids.max()) + 1 if ids.size else 0
    return most_frequent(token_frequencies(ids, vocab_size), n)


def most_frequent(counts_V: np.ndarray, n: int) -> np.ndarray:
    """``frequent_token_ids`` from counts: the ``n`` ids with the largest counts.

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


def _pca(vectors_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(points_Nx2, explained_2)``: the projection and its variance fractions."""
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
    return _pca(vectors_NxD)[0]


def position_similarity(pos_LxD: np.ndarray) -> np.ndarray:
    """Cosine similarity between every pair of positional embeddings: ``LxL``.

    Example:
      >>> position_similarity(np.array([[1.0, 0], [1, 1]])).round(3).tolist()
      [[1.0, 0.707], [0.707, 1.0]]
    """
    return cosine_similarity(pos_LxD, range(len(pos_LxD)))


@contextlib.contextmanager
def _atomic(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Opens a temp file beside ``path`` and moves it into place only on success."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    # Not mkstemp: its 0600 mode would survive os.replace; 0666 lets umask decide.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _save(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
    FigureCanvasAgg(fig)  # Attaches an Agg canvas to this figure only; no global backend.
    fig.tight_layout()
    with _atomic(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return pathlib.Path(path)


def _plot_label(enc: tiktoken.Encoding, token_id: int) -> str:
    # Paired '$' would switch matplotlib into mathtext; escaped, it prints as '$'.
    return token_label(enc, token_id).replace("$", r"\$")


def plot_loss_curves(
    metrics: Sequence[dict], path: str | os.PathLike, *, vocab_size: int | None = None
) -> pathlib.Path:
    """Plots train (and, where logged, validation) loss against step to a PNG.

    With ``vocab_size``, a dashed line marks ln(vocab): the loss of a uniform guess.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     rows = [{"step": 0, "train_loss": 10.8, "val_loss": 10.8}, {"step": 50, "train_loss": 6.1}]
      ...     plot_loss_curves(rows, f"{d}/loss.png", vocab_size=50257).name
      'loss.png'
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    train = [(m["step"], m["train_loss"]) for m in metrics if m.get("train_loss") is not None]
    val = [
        (m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None and not math.isnan(m["val_loss"])
    ]
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange", markersize=4)
    if vocab_size:
        ax.axhline(
            math.log(vocab_size),
            ls="--",
            color="gray",
            label=f"uniform guess ln({vocab_size:,}) = {math.log(vocab_size):.2f}",
        )
    ax.set(title="Next-token loss", xlabel="step", ylabel="cross-entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_neighbors(
    enc: tiktoken.Encoding, before: Neighbors, after: Neighbors, query_ids: Sequence[int], path: str | os.PathLike
) -> pathlib.Path:
    """Renders a probe | before training | after training table of neighbours.

    Example:
      >>> from jaxembed.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     plot_neighbors(enc, [[(1242, 0.1)]], [[(19338, 0.7)]], [14210], f"{d}/nn.png").name
      'nn.png'
    """
    k = max((len(row) for row in [*before, *after]), default=1) or 1
    fig = Figure(figsize=(9, 0.8 + len(query_ids) * (0.22 * k + 0.25)))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title("Nearest neighbours by cosine similarity", fontweight="bold")
    cells = [
        [_plot_label(enc, q), *("\n".join(f"{_plot_label(enc, i)}  {cos:+.2f}" for i, cos in row) for row in (b, a))]
        for q, b, a in zip(query_ids, before, after, strict=True)
    ]
    table = ax.table(
        cellText=cells,
        colLabels=["probe token", "before training", "after training"],
        colWidths=[0.2, 0.4, 0.4],
        cellLoc="left",
        loc="upper center",
    )
    table.auto_set_font_size(False)
    row_height = 0.95 / (len(cells) * k + 1)
    for (row, _), cell in table.get_celld().items():
        cell.set_fontsize(9)
        cell.set_text_props(family="monospace", fontweight="bold" if row == 0 else "normal")
        cell.set_height(row_height * (1 if row == 0 else k))  # Fit k lines per probe.
    return _save(fig, path)


def plot_pca(
    enc: tiktoken.Encoding,
    table_VxD: np.ndarray,
    token_ids: Sequence[int],
    path: str | os.PathLike,
    *,
    title: str = "Token embeddings, first two principal components",
) -> pathlib.Path:
    """Scatters the PCA of ``table_VxD[token_ids]``, labelling the first 60 points.

    Example:
      >>> from jaxembed.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> table_VxD = np.random.default_rng(0).normal(size=(enc.n_vocab, 8))
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     plot_pca(enc, table_VxD, [14210, 43989, 38201], f"{d}/pca.png").name
      'pca.png'
    """
    token_ids = np.asarray(token_ids, dtype=np.int64)
    points_Nx2, explained_2 = _pca(np.asarray(table_VxD)[token_ids])
    fig = Figure(figsize=(8, 7))
    ax = fig.add_subplot()
    ax.scatter(points_Nx2[:, 0], points_Nx2[:, 1], s=12, alpha=0.6)
    for token_id, (x, y) in zip(token_ids[:MAX_PCA_LABELS], points_Nx2):
        ax.annotate(_plot_label(enc, token_id), (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    shown = f" (labels on first {MAX_PCA_LABELS})" if len(token_ids) > MAX_PCA_LABELS else ""
    ax.set(
        title=f"{title}\n{len(token_ids)} tokens{shown}",
        xlabel=f"PC1 ({explained_2[0]:.0%} of variance)",
        ylabel=f"PC2 ({explained_2[1]:.0%} of variance)",
    )
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_position_similarity(pos_LxD: np.ndarray, path: str | os.PathLike) -> pathlib.Path:
    """Heatmap of cosine similarity between positional embeddings.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     plot_position_similarity(np.eye(4) + 0.1, f"{d}/pos.png").name
      'pos.png'
    """
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot()
    image = ax.imshow(position_similarity(pos_LxD), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set(title="Positional embeddings: cosine similarity", xlabel="position", ylabel="position")
    return _save(fig, path)


def export_projector(
    enc: tiktoken.Encoding, table_VxD: np.ndarray, token_ids: Sequence[int], outdir: str | os.PathLike
) -> dict[str, pathlib.Path]:
    r"""Writes files for the TensorBoard / projector.tensorflow.org embedding viewer.

    ``embeddings.npy`` holds the full float32 table; ``vectors.tsv`` the rows
    for ``token_ids``; ``metadata.tsv`` a ``token<TAB>id`` header (the
    projector wants one for multi-column metadata), then one repr-escaped
    token per row, so tabs and newlines inside tokens cannot break the TSV.

    Example:
      >>> from jaxembed.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     paths = export_projector(enc, np.ones((enc.n_vocab, 2)), [198, 14210], d)
      ...     paths["metadata"].read_text().splitlines()
      ['token\tid', "'\\n'\t198", "' thou'\t14210"]
    """
    outdir = pathlib.Path(outdir)
    table_VxD = np.asarray(table_VxD, dtype=np.float32)
    token_ids = np.asarray(token_ids, dtype=np.int64)
    paths = {
        name: outdir / f"{name}.{ext}" for name, ext in [("embeddings", "npy"), ("vectors", "tsv"), ("metadata", "tsv")]
    }
    with _atomic(paths["embeddings"], "wb") as f:
        np.save(f, table_VxD)
    with _atomic(paths["vectors"]) as f:
        np.savetxt(f, table_VxD[token_ids].reshape(len(token_ids), -1), fmt="%.9g", delimiter="\t")
    with _atomic(paths["metadata"]) as f:
        f.write("token\tid\n")
        f.writelines(f"{token_label(enc, i)}\t{i}\n" for i in token_ids)
    return paths


def write_report(
    path: str | os.PathLike,
    *,
    title: str,
    summary_lines: Sequence[str],
    images: dict[str, str],
    sections: dict[str, str] | None = None,
) -> pathlib.Path:
    """Writes a Markdown report: title, bullets, fenced text sections, images.

    ``images`` maps caption -> file name relative to the report.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     out = write_report(f"{d}/README.md", title="Run 1", summary_lines=["loss 5.2"],
      ...                        images={"Loss": "loss.png"}, sections={"Neighbours": "' thou' -> ' art'"})
      ...     print(out.read_text())
      # Run 1
      <BLANKLINE>
      - loss 5.2
      <BLANKLINE>
      ## Neighbours
      <BLANKLINE>
      ```
      ' thou' -> ' art'
      ```
      <BLANKLINE>
      ## Loss
      <BLANKLINE>
      ![Loss](loss.png)
      <BLANKLINE>
    """
    parts = [f"# {title}", "\n".join(f"- {line}" for line in summary_lines)]
    for heading, text in (sections or {}).items():
        # A fence longer than any backtick run in the text cannot be closed early.
        fence = "`" * max(3, 1 + max(map(len, re.findall("`+", text)), default=0))
        parts.append(f"## {heading}\n\n{fence}\n{text.rstrip()}\n{fence}")
    # Markdown link targets cannot contain bare spaces; <...> allows them.
    parts += [
        f"## {caption}\n\n![{caption}]({f'<{name}>' if ' ' in name else name})" for caption, name in images.items()
    ]
    with _atomic(path) as f:
        f.write("\n\n".join(p for p in parts if p) + "\n")
    return pathlib.Path(path)


def training_report(
    workdir: str | os.PathLike,
    *,
    enc: tiktoken.Encoding,
    metrics: Sequence[dict],
    before_VxD: np.ndarray,
    after_VxD: np.ndarray,
    pos_LxD: np.ndarray,
    token_counts_V: np.ndarray,
    probe_tokens: Sequence[str],
    num_neighbors: int = 5,
    pca_tokens: int = 150,
    projector_tokens: int = 2000,
    min_count: int = 3,
) -> pathlib.Path:
    """Writes ``workdir/report.md`` with its PNGs and projector files.

    Neighbours are ranked among tokens seen at least ``min_count`` times in
    training: rows of unseen tokens all move the same way (the model learns
    never to predict them), so they say nothing about their token.
    Probe words that are not single GPT-2 tokens, or never occur, are listed
    as skipped rather than failing the report.

    Example:
      >>> import tempfile
      >>> from jaxembed.tokenizer import get_encoding
      >>> enc = get_encoding()
      >>> rng = np.random.default_rng(0)
      >>> counts = np.zeros(enc.n_vocab, int); counts[:500] = 10
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = training_report(d, enc=enc, metrics=[{"step": 0, "val_loss": 10.8}],
      ...         before_VxD=rng.normal(size=(enc.n_vocab, 8)), after_VxD=rng.normal(size=(enc.n_vocab, 8)),
      ...         pos_LxD=rng.normal(size=(4, 8)), token_counts_V=counts, probe_tokens=[" the"])
      ...     "## Loss curves" in path.read_text()
      True
    """
    out = pathlib.Path(workdir)
    candidates = np.flatnonzero(np.asarray(token_counts_V) >= min_count)
    probes, skipped = [], []
    for word in probe_tokens:
        try:
            (token_id,) = resolve_tokens(enc, [word])
        except ValueError as e:
            skipped.append(f"{word!r}: {e}")
            continue
        (probes if token_counts_V[token_id] > 0 else skipped).append(token_id)
    skipped = [s if isinstance(s, str) else f"{token_label(enc, s)}: not in the training text" for s in skipped]
    before = nearest_neighbors(before_VxD, probes, num_neighbors, candidates)
    after = nearest_neighbors(after_VxD, probes, num_neighbors, candidates)
    frequent = most_frequent(token_counts_V, pca_tokens)
    images = {
        "Loss curves": plot_loss_curves(metrics, out / "loss.png", vocab_size=len(token_counts_V)).name,
        "Nearest neighbours before and after training": plot_neighbors(
            enc, before, after, probes, out / "neighbors.png"
        ).name,
        f"PCA of the {len(frequent)} most frequent tokens (trained)": plot_pca(
            enc, after_VxD, frequent, out / "pca.png", title="Token embeddings after training (PCA)"
        ).name,
        "Positional embedding cosine similarity": plot_position_similarity(pos_LxD, out / "positions.png").name,
    }
    projector = most_frequent(token_counts_V, projector_tokens)
    export_projector(enc, after_VxD, projector, out / "projector")
    val = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    summary = [f"steps: {metrics[-1]['step']}" if metrics else "steps: 0"]
    if val:
        summary.append(f"validation loss: {val[0][1]:.3f} (step {val[0][0]}) -> {val[-1][1]:.3f} (step {val[-1][0]})")
    speeds = [m["tokens_per_sec"] for m in metrics if "tokens_per_sec" in m]
    if speeds:
        summary.append(f"median throughput: {np.median(speeds):,.0f} tokens/s")
    summary.append(f"uniform-guess loss ln({len(token_counts_V)}) = {math.log(len(token_counts_V)):.3f}")
    sections = {
        "Nearest neighbours before training": format_neighbors(enc, probes, before),
        "Nearest neighbours after training": format_neighbors(enc, probes, after),
    }
    if skipped:
        sections["Skipped probes"] = "\n".join(skipped)
    return write_report(
        out / "report.md", title="What the embeddings learned", summary_lines=summary, images=images, sections=sections
    )
