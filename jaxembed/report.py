"""The run report: plots of what the embeddings learned, ``report.md``, projector files.

``write_run_report(result, config.report)`` is what ``jaxembed train`` calls:
it draws the numbers ``jaxembed.analysis`` computes into PNGs and writes a
Markdown report beside them. Plots use ``matplotlib.figure.Figure`` with the
Agg canvas directly, never pyplot, so they work headless and inside notebooks
without changing the backend or leaving figures open. Every file is written
atomically (``jaxembed.fileio``).

Example:
  >>> import tempfile
  >>> with tempfile.TemporaryDirectory() as d:
  ...     rows = [{"step": 0, "val_loss": 10.8}, {"step": 50, "train_loss": 6.1, "val_loss": 6.5}]
  ...     plot_loss_curves(rows, f"{d}/loss.png", vocab_size=50257).name
  'loss.png'
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxembed import analysis
from jaxembed.analysis import (
    Neighbors,
    format_neighbors,
    most_frequent,
    pca,
    position_similarity,
    resolve_tokens,
    token_label,
)
from jaxembed.fileio import atomic_open

if TYPE_CHECKING:
    import ml_collections
    import tiktoken

    from jaxembed.train import TrainResult

#: Most labels drawn per PCA panel; fewer when they would overlap.
MAX_PCA_LABELS = 40


def _save(fig: Figure, path: str | os.PathLike, *, tight: bool = True) -> pathlib.Path:
    FigureCanvasAgg(fig)  # Attaches an Agg canvas to this figure only; no global backend.
    if tight:
        fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return pathlib.Path(path)


def _plot_label(enc: tiktoken.Encoding, token_id: int) -> str:
    # Paired '$' would switch matplotlib into mathtext; escaped, it prints as '$'.
    return token_label(enc, token_id).replace("$", r"\$")


def plot_loss_curves(
    metrics: Sequence[dict], path: str | os.PathLike, *, vocab_size: int | None = None
) -> pathlib.Path:
    """Plots train (and, where logged, validation) loss against step to a PNG.

    With ``vocab_size`` (the number of classes the model chooses between: the
    active vocabulary ``K`` with ``model.active_vocab``), a dashed line marks
    ln(vocab_size): the loss of a uniform guess, where an untrained model
    starts. The best validation step is starred; if the run overfits
    (``analysis.val_loss_summary``), the steps after the best are shaded.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     rows = [{"step": 0, "train_loss": 10.8, "val_loss": 10.8}, {"step": 50, "train_loss": 6.1}]
      ...     plot_loss_curves(rows, f"{d}/loss.png", vocab_size=50257).name
      'loss.png'
    """
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    train = [(m["step"], m["train_loss"]) for m in metrics if m.get("train_loss") is not None]
    val = [
        (m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None and not math.isnan(m["val_loss"])
    ]
    summary = analysis.val_loss_summary(metrics)
    if train:
        ax.plot(*zip(*train), label="train loss (mean since the last row)", color="tab:blue")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange", markersize=4)
        best_step, best = summary["val_loss_best_step"], summary["val_loss_best"]
        ax.plot(
            [best_step],
            [best],
            "*",
            color="tab:red",
            markersize=14,
            zorder=5,
            label=f"best validation: {best:.3f} at step {best_step}",
        )
        if summary["overfitting_from_step"] is not None:
            ax.axvspan(
                best_step,
                val[-1][0],
                color="tab:red",
                alpha=0.08,
                label=f"overfitting: validation rises after step {best_step}",
            )
    if vocab_size:
        uniform = uniform_guess_loss(vocab_size)
        ax.axhline(uniform, ls="--", color="gray", label=f"uniform guess ln({vocab_size:,}) = {uniform:.2f}")
    ax.set(title="Next-token loss", xlabel="step", ylabel="cross-entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def uniform_guess_loss(num_classes: int) -> float:
    """ln(num_classes): the cross-entropy of a uniform guess over ``num_classes`` tokens.

    Raises:
      ValueError: ``num_classes`` < 1.

    Example:
      >>> round(uniform_guess_loss(50257), 3)
      10.825
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: must be an integer >= 1.")
    return math.log(num_classes)


def plot_neighbors(
    enc: tiktoken.Encoding,
    before: Neighbors,
    after: Neighbors,
    query_ids: Sequence[int],
    path: str | os.PathLike,
    *,
    counts_V: np.ndarray | None = None,
    subtitle: str = "",
) -> pathlib.Path:
    """Renders a probe | before training | after training table of neighbours.

    With ``counts_V``, a probe never seen in training shows a note instead of
    neighbours.

    Example:
      >>> from jaxembed.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     plot_neighbors(enc, [[(1242, 0.1)]], [[(19338, 0.7)]], [14210], f"{d}/nn.png").name
      'nn.png'
    """
    k = max((len(row) for row in [*before, *after]), default=1) or 1
    fig = Figure(figsize=(9, 1.1 + len(query_ids) * (0.22 * k + 0.25)))
    ax = fig.add_subplot()
    ax.set_axis_off()
    title = "Nearest neighbours by centred cosine similarity"
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontweight="bold", fontsize=10)

    def cell(row, query):
        if counts_V is not None and counts_V[query] == 0:
            return "(never in the training text:\n no meaningful neighbours)"
        return "\n".join(f"{_plot_label(enc, i)}  {cos:+.2f}" for i, cos in row)

    cells = [[_plot_label(enc, q), cell(b, q), cell(a, q)] for q, b, a in zip(query_ids, before, after, strict=True)]
    table = ax.table(
        cellText=cells,
        colLabels=["probe token", "before training", "after training"],
        colWidths=[0.2, 0.4, 0.4],
        cellLoc="left",
        loc="upper center",
    )
    table.auto_set_font_size(False)
    row_height = 0.95 / (len(cells) * k + 1)
    for (row, _), c in table.get_celld().items():
        c.set_fontsize(9)
        c.set_text_props(family="monospace", fontweight="bold" if row == 0 else "normal")
        c.set_height(row_height * (1 if row == 0 else k))  # Fit k lines per probe.
    return _save(fig, path)


def _place_labels(ax, points_Nx2: np.ndarray, labels: Sequence[str], max_labels: int) -> list[int]:
    """Labels points in the given (priority) order where a label fits without covering another label or point.

    Each label tries eight spots around its point; a label that fits nowhere
    is left out, so dense clusters get fewer labels instead of a blob.
    Returns the indices of the labelled points.
    """
    renderer = ax.figure.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    xy_Nx2 = ax.transData.transform(points_Nx2)
    radius = 3.0  # display pixels around a marker that a label must not cover
    placed, labelled = [], []
    offsets = [(5, 3), (5, -11), (-5, 3), (-5, -11), (7, -4), (-7, -4), (0, 8), (0, -16)]
    for n, ((x, y), label) in enumerate(zip(points_Nx2, labels)):
        if len(labelled) >= max_labels:
            break
        for dx, dy in offsets:
            text = ax.annotate(
                label,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=8.5,
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                color="black",
            )
            box = text.get_window_extent(renderer).expanded(1.04, 1.08)
            inside = axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1
            covers_point = (
                (xy_Nx2[:, 0] > box.x0 - radius)
                & (xy_Nx2[:, 0] < box.x1 + radius)
                & (xy_Nx2[:, 1] > box.y0 - radius)
                & (xy_Nx2[:, 1] < box.y1 + radius)
            ).any()
            if inside and not covers_point and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                labelled.append(n)
                break
            text.remove()
    return labelled


def plot_pca(
    enc: tiktoken.Encoding,
    table_VxD: np.ndarray,
    token_ids: Sequence[int],
    path: str | os.PathLike,
    *,
    title: str = "Token embeddings, first two principal components",
    before_VxD: np.ndarray | None = None,
) -> pathlib.Path:
    """Scatters the PCA of ``table_VxD[token_ids]``; with ``before_VxD``, before | after panels.

    ``token_ids`` are in priority order (most frequent first): labels go to
    the first ones that fit without overlapping (at most ``MAX_PCA_LABELS``
    per panel). Each panel has its own principal axes.

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
    panels = (
        [("after training", table_VxD)]
        if before_VxD is None
        else [("before training", before_VxD), ("after training", table_VxD)]
    )
    fig = Figure(figsize=(7.5 * len(panels), 7.5))
    FigureCanvasAgg(fig)
    labels = [_plot_label(enc, i) for i in token_ids]
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))]
    fig.suptitle(title, fontweight="bold")
    projected = []
    for ax, (name, table) in zip(axes, panels):
        points_Nx2, explained_2 = pca(np.asarray(table)[token_ids])
        projected.append(points_Nx2)
        ax.scatter(points_Nx2[:, 0], points_Nx2[:, 1], s=14, color="0.7", zorder=1)
        pad_2 = 0.08 * (np.ptp(points_Nx2, axis=0) + 1e-12)
        ax.set_xlim(points_Nx2[:, 0].min() - pad_2[0], points_Nx2[:, 0].max() + pad_2[0])
        ax.set_ylim(points_Nx2[:, 1].min() - pad_2[1], points_Nx2[:, 1].max() + pad_2[1])
        ax.set(
            title=f"{name}: {len(token_ids)} tokens, {MAX_PCA_LABELS} labelled (grey: unlabelled)",
            xlabel=f"PC1 ({explained_2[0]:.0%} of variance)",
            ylabel=f"PC2 ({explained_2[1]:.0%} of variance)",
        )
        ax.grid(alpha=0.3)
    # Lay out once, before placing labels: moving the axes afterwards would break the overlap checks.
    fig.tight_layout()
    for ax, (name, _), points_Nx2 in zip(axes, panels, projected):
        labelled = _place_labels(ax, points_Nx2, labels, MAX_PCA_LABELS)
        # The labelled points stand out, so each label's point is clear.
        ax.scatter(points_Nx2[labelled, 0], points_Nx2[labelled, 1], s=18, color="tab:blue", zorder=2)
        ax.set_title(f"{name}: {len(token_ids)} tokens, {len(labelled)} labelled (grey: unlabelled)")
    return _save(fig, path, tight=False)


def plot_position_similarity(
    pos_LxD: np.ndarray, path: str | os.PathLike, *, before_LxD: np.ndarray | None = None
) -> pathlib.Path:
    """Heatmaps of cosine similarity between positional embeddings; with ``before_LxD``, before | after.

    Both panels share one colour scale (-1 to 1); each title gives the
    table's ``analysis.position_locality``.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     plot_position_similarity(np.eye(4) + 0.1, f"{d}/pos.png").name
      'pos.png'
    """
    panels = (
        [("after training", pos_LxD)]
        if before_LxD is None
        else [("before training", before_LxD), ("after training", pos_LxD)]
    )
    fig = Figure(figsize=(5.6 * len(panels) + 1.2, 5.4))
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))]
    for ax, (name, table) in zip(axes, panels):
        image = ax.imshow(position_similarity(table), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set(title=f"{name}\nlocality {analysis.position_locality(table):+.2f}", xlabel="position", ylabel="position")
    fig.suptitle("Positional embeddings: cosine similarity between positions", fontweight="bold")
    fig.tight_layout()
    fig.colorbar(image, ax=axes, label="cosine similarity", shrink=0.85)
    return _save(fig, path, tight=False)


def plot_position_pca(
    pos_LxD: np.ndarray, path: str | os.PathLike, *, before_LxD: np.ndarray | None = None
) -> pathlib.Path:
    """The positional table's first two principal components, points joined in position order.

    Each point is labelled with its position (every ``ceil(L / 32)``-th for
    long contexts) and coloured from first (dark) to last (yellow) position.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     plot_position_pca(np.random.default_rng(0).normal(size=(8, 4)), f"{d}/pos_pca.png").name
      'pos_pca.png'
    """
    panels = (
        [("after training", pos_LxD)]
        if before_LxD is None
        else [("before training", before_LxD), ("after training", pos_LxD)]
    )
    fig = Figure(figsize=(5.8 * len(panels), 5.6))
    every = max(1, math.ceil(len(pos_LxD) / 32))
    for i, (name, table) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        points_Lx2, explained_2 = pca(table)
        order_L = np.arange(len(points_Lx2))
        ax.plot(points_Lx2[:, 0], points_Lx2[:, 1], "-", color="0.6", lw=1, zorder=1)
        ax.scatter(
            points_Lx2[:, 0],
            points_Lx2[:, 1],
            c=order_L,
            cmap="viridis",
            s=36,
            zorder=2,
            edgecolors="black",
            linewidths=0.4,
        )
        for pos in order_L[::every]:
            ax.annotate(str(pos), points_Lx2[pos], xytext=(4, 4), textcoords="offset points", fontsize=8)
        # PCA removes the mean; its length against the spread shows a table that collapsed to one vector.
        table = np.asarray(table, dtype=np.float64)
        mean_length = np.linalg.norm(table.mean(axis=0))
        spread = np.sqrt(((table - table.mean(axis=0)) ** 2).sum(axis=1).mean())
        ax.set(
            title=f"{name}: locality {analysis.position_locality(table):+.2f}\n"
            f"mean vector length {mean_length:.2f}, rms distance from it {spread:.2f}",
            xlabel=f"PC1 ({explained_2[0]:.0%} of variance)",
            ylabel=f"PC2 ({explained_2[1]:.0%} of variance)",
        )
        ax.grid(alpha=0.3)
    fig.suptitle("Positional embeddings, first two principal components, in position order", fontweight="bold")
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
    with atomic_open(paths["embeddings"], "wb") as f:
        np.save(f, table_VxD)
    with atomic_open(paths["vectors"]) as f:
        np.savetxt(f, table_VxD[token_ids].reshape(len(token_ids), -1), fmt="%.9g", delimiter="\t")
    with atomic_open(paths["metadata"]) as f:
        f.write("token\tid\n")
        f.writelines(f"{token_label(enc, i)}\t{i}\n" for i in token_ids)
    return paths


def export_tables(
    token_VxD: np.ndarray, position_LxD: np.ndarray, outdir: str | os.PathLike
) -> dict[str, pathlib.Path]:
    """Writes ``token_embeddings.npy`` [V, D] and ``position_embeddings.npy`` [L, D], float32, for numpy users.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     paths = export_tables(np.ones((5, 2)), np.zeros((3, 2)), d)
      ...     {name: np.load(path).shape for name, path in paths.items()}
      {'token_embeddings': (5, 2), 'position_embeddings': (3, 2)}
    """
    outdir = pathlib.Path(outdir)
    paths = {}
    for name, table in [("token_embeddings", token_VxD), ("position_embeddings", position_LxD)]:
        paths[name] = outdir / f"{name}.npy"
        with atomic_open(paths[name], "wb") as f:
            np.save(f, np.asarray(table, dtype=np.float32))
    return paths


def write_report(
    path: str | os.PathLike,
    *,
    title: str,
    summary_lines: Sequence[str],
    images: dict[str, str],
    sections: dict[str, str] | None = None,
    captions: dict[str, str] | None = None,
    intro: str = "",
) -> pathlib.Path:
    """Writes a Markdown report: title, intro, bullets, fenced text sections, images with captions.

    ``images`` maps heading -> file name relative to the report; ``captions``
    maps the same headings to a paragraph printed under the picture.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     out = write_report(f"{d}/README.md", title="Run 1", summary_lines=["loss 5.2"],
      ...                        images={"Loss": "loss.png"}, sections={"Neighbours": "' thou' -> ' art'"},
      ...                        captions={"Loss": "Lower is better."})
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
      Lower is better.
      <BLANKLINE>
    """
    captions = captions or {}
    parts = [f"# {title}", intro.strip(), "\n".join(f"- {line}" for line in summary_lines)]
    for heading, text in (sections or {}).items():
        # A fence longer than any backtick run in the text cannot be closed early.
        fence = "`" * max(3, 1 + max(map(len, re.findall("`+", text)), default=0))
        parts.append(f"## {heading}\n\n{fence}\n{text.rstrip()}\n{fence}")
    for heading, name in images.items():
        # Markdown link targets cannot contain bare spaces; <...> allows them.
        target = f"<{name}>" if " " in name else name
        caption = captions.get(heading, "").strip()
        parts.append(f"## {heading}\n\n![{heading}]({target})" + (f"\n\n{caption}" if caption else ""))
    with atomic_open(path) as f:
        f.write("\n\n".join(p for p in parts if p) + "\n")
    return pathlib.Path(path)


def _signed(x: float) -> str:
    return f"{round(x, 2) + 0.0:+.2f}"  # + 0.0 turns -0.0 into 0.0: no "-0.00"


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def report_numbers(
    *,
    metrics: Sequence[dict],
    before_VxD: np.ndarray,
    after_VxD: np.ndarray,
    pos_LxD: np.ndarray,
    pos_before_LxD: np.ndarray,
    token_counts_V: np.ndarray,
    num_classes: int,
    val_loss_positions_shuffled: float | None = None,
    min_count: int = analysis.DEFAULT_MIN_COUNT,
) -> dict:
    """The run's numbers as ``report.json`` stores them (JSON-safe: NaN becomes ``None``).

    Keys: ``steps``; ``num_classes`` and ``uniform_guess_loss`` (ln of it);
    ``val_loss_initial``, ``val_loss_final``, ``val_loss_best``,
    ``val_loss_best_step``, ``overfitting_from_step`` and ``overfit_margin``
    (``analysis.val_loss_summary``); ``val_loss_positions_shuffled`` and
    ``positions_shuffled_gap`` (shuffled minus final: what the model relies on
    position); ``position_locality`` and ``position_locality_initial``
    (``analysis.position_locality`` of the trained and untrained tables);
    ``neighbor_min_count`` and ``neighbor_candidates`` (how many tokens
    neighbours are ranked among); ``random_pair_cosine`` and
    ``random_pair_cosine_centred``, each ``{"mean", "std"}`` over the
    candidates of the trained table (``analysis.random_pair_cosine``);
    ``median_tokens_per_sec``.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> counts_V = np.array([5, 5, 0, 5])
      >>> numbers = report_numbers(metrics=[{"step": 0, "val_loss": 1.4}], before_VxD=rng.normal(size=(4, 3)),
      ...     after_VxD=rng.normal(size=(4, 3)), pos_LxD=rng.normal(size=(4, 3)),
      ...     pos_before_LxD=rng.normal(size=(4, 3)), token_counts_V=counts_V, num_classes=4)
      >>> numbers["neighbor_candidates"], round(numbers["uniform_guess_loss"], 3), numbers["val_loss_best_step"]
      (3, 1.386, 0)
    """
    summary = analysis.val_loss_summary(metrics)
    candidates_C = analysis.neighbor_candidates(token_counts_V, min_count)
    raw = analysis.random_pair_cosine(after_VxD, candidates_C)
    centred = analysis.random_pair_cosine(after_VxD, candidates_C, centre=True)
    shuffled = _finite_or_none(val_loss_positions_shuffled)
    final = summary["val_loss_final"]
    speeds = [m["tokens_per_sec"] for m in metrics if "tokens_per_sec" in m]
    numbers = {
        "steps": int(metrics[-1]["step"]) if metrics else 0,
        "num_classes": int(num_classes),
        "uniform_guess_loss": uniform_guess_loss(num_classes),
        **summary,
        "overfit_margin": analysis.OVERFIT_MARGIN,
        "val_loss_positions_shuffled": shuffled,
        "positions_shuffled_gap": None if shuffled is None or final is None else shuffled - final,
        "position_locality": analysis.position_locality(pos_LxD),
        "position_locality_initial": analysis.position_locality(pos_before_LxD),
        "neighbor_min_count": int(min_count),
        "neighbor_candidates": int(len(candidates_C)),
        "random_pair_cosine": {"mean": _finite_or_none(raw[0]), "std": _finite_or_none(raw[1])},
        "random_pair_cosine_centred": {"mean": _finite_or_none(centred[0]), "std": _finite_or_none(centred[1])},
        "median_tokens_per_sec": float(np.median(speeds)) if speeds else None,
    }
    return {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in numbers.items()}


def _position_caption(numbers: dict, num_layers: int | None, length: int) -> str:
    locality, initial = numbers["position_locality"], numbers["position_locality_initial"]
    how = (
        f"Each cell (i, j) is the cosine similarity between the vectors of positions i and j (red: alike, blue: "
        f"opposite, white: unrelated); the diagonal is 1 by definition. The number in each title is the "
        f"*locality*: mean cosine of adjacent positions minus mean cosine of positions at least {length / 2:g} "
        f"apart (0 means no sense of order). Untrained: {initial:+.2f}; trained: {locality:+.2f}."
    )
    if num_layers == 0:
        return how + (
            " This model has no attention layer (`model.num_layers = 0`): each output depends only on its own "
            "token and its own position vector, and nothing mixes positions. A position vector can then only shift "
            "the prediction towards tokens that are common at that position, and in running text every position "
            "sees the same token frequencies, so no position-specific signal reaches the loss: every position "
            "learns the same vector and the trained map is uniformly red, however long it trains."
        )
    return how + (
        " With attention, a token's prediction mixes the tokens before it, and the positional vectors are how "
        "the model tells them apart; a band of red along the diagonal fading away from it means nearby positions "
        "got similar vectors: the table has learned an order from scratch, since nothing told it that 3 is "
        "next to 4."
    )


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
    min_count: int = analysis.DEFAULT_MIN_COUNT,
    pos_before_LxD: np.ndarray | None = None,
    num_classes: int | None = None,
    num_layers: int | None = None,
    val_loss_positions_shuffled: float | None = None,
) -> pathlib.Path:
    """Writes ``workdir/report.md`` and ``report.json`` with their PNGs and projector files.

    Neighbours come from ``analysis.rank_neighbors``: centred cosine among
    ``analysis.neighbor_candidates(token_counts_V, min_count)``, the same rule
    ``jaxembed neighbors`` uses. Probe words that are not single GPT-2 tokens
    are listed as skipped; probes that never occur in the training text are
    flagged, not ranked.

    Args:
      pos_before_LxD: the untrained positional table (default: ``pos_LxD``'s
        shape of zeros is meaningless, so pass it; ``None`` draws only the
        trained table and reports its locality as the initial one too).
      num_classes: how many tokens the model chooses between (``K`` with
        ``model.active_vocab``; default: the tokenizer's vocabulary).
      num_layers: ``config.model.num_layers``, for the positions caption.
      val_loss_positions_shuffled: ``TrainResult.val_loss_positions_shuffled``.

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
      ...     "## Loss curves" in path.read_text(), (path.parent / "report.json").exists()
      (True, True)
    """
    out = pathlib.Path(workdir)
    token_counts_V = np.asarray(token_counts_V)
    num_classes = int(num_classes or len(token_counts_V))
    pos_before_LxD = pos_LxD if pos_before_LxD is None else pos_before_LxD
    probes, skipped = [], []
    for word in probe_tokens:
        try:
            probes += resolve_tokens(enc, [word])
        except ValueError as e:
            skipped.append(f"{word!r}: {e}")
    before = analysis.rank_neighbors(before_VxD, token_counts_V, probes, num_neighbors, min_count)
    after = analysis.rank_neighbors(after_VxD, token_counts_V, probes, num_neighbors, min_count)
    numbers = report_numbers(
        metrics=metrics,
        before_VxD=before_VxD,
        after_VxD=after_VxD,
        pos_LxD=pos_LxD,
        pos_before_LxD=pos_before_LxD,
        token_counts_V=token_counts_V,
        num_classes=num_classes,
        val_loss_positions_shuffled=val_loss_positions_shuffled,
        min_count=min_count,
    )
    numbers["num_layers"] = num_layers
    numbers["neighbors"] = [
        {
            "token": token_label(enc, q),
            "id": int(q),
            "count": int(token_counts_V[q]),
            "neighbors": [{"token": token_label(enc, i), "id": i, "cosine": cos} for i, cos in row],
            **({"note": analysis.UNSEEN_NOTE} if token_counts_V[q] == 0 else {}),
        }
        for q, row in zip(probes, after)
    ]
    frequent = most_frequent(token_counts_V, pca_tokens)
    raw, centred = numbers["random_pair_cosine"], numbers["random_pair_cosine_centred"]
    baseline = (
        f"random pair of candidates: centred {_signed(centred['mean'])} ± {centred['std']:.2f} "
        f"(raw cosine {_signed(raw['mean'])} ± {raw['std']:.2f})"
        if centred["mean"] is not None
        else "fewer than two candidates"
    )
    length = len(pos_LxD)
    images = {
        "Loss curves": plot_loss_curves(metrics, out / "loss.png", vocab_size=num_classes).name,
        "Nearest neighbours before and after training": plot_neighbors(
            enc, before, after, probes, out / "neighbors.png", counts_V=token_counts_V, subtitle=baseline
        ).name,
        "Token embeddings, first two principal components": plot_pca(
            enc,
            after_VxD,
            frequent,
            out / "pca.png",
            before_VxD=before_VxD,
            title=f"PCA of the {len(frequent)} most frequent tokens",
        ).name,
        "Positional embeddings: cosine similarity": plot_position_similarity(
            pos_LxD, out / "positions.png", before_LxD=pos_before_LxD
        ).name,
        "Positional embeddings: the path through positions": plot_position_pca(
            pos_LxD, out / "positions_pca.png", before_LxD=pos_before_LxD
        ).name,
    }
    export_projector(enc, after_VxD, most_frequent(token_counts_V, projector_tokens), out / "projector")
    captions = _captions(numbers, num_layers, length, len(frequent))
    summary = _summary(numbers, length)
    sections = {
        "Nearest neighbours before training": format_neighbors(enc, probes, before, token_counts_V),
        "Nearest neighbours after training": format_neighbors(enc, probes, after, token_counts_V),
    }
    if skipped:
        sections["Skipped probes"] = "\n".join(skipped)
    intro = (
        f"Neighbours are ranked by *centred* cosine among the {numbers['neighbor_candidates']:,} tokens seen at "
        f"least {min_count} times in training (`analysis.neighbor_candidates`, the same rule as "
        "`jaxembed neighbors`): the mean vector of those candidates is subtracted first, because trained token "
        f"vectors share a common direction (raw cosine of a random pair: {raw['mean']:+.2f}) that would make "
        "every token look like every other. Read a neighbour's cosine against the baseline, the cosine of a "
        f"{baseline}. All numbers are in `report.json`."
    )
    with atomic_open(out / "report.json") as f:
        json.dump(numbers, f, indent=2)
        f.write("\n")
    return write_report(
        out / "report.md",
        title="What the embeddings learned",
        intro=intro,
        summary_lines=summary,
        images=images,
        sections=sections,
        captions=captions,
    )


def _summary(numbers: dict, length: int) -> list[str]:
    lines = [f"steps: {numbers['steps']}"]
    if numbers["val_loss_initial"] is not None:
        lines.append(
            f"validation loss: {numbers['val_loss_initial']:.3f} (step 0) -> {numbers['val_loss_final']:.3f} "
            f"(step {numbers['steps']}); best {numbers['val_loss_best']:.3f} at step {numbers['val_loss_best_step']}"
        )
    if numbers["overfitting_from_step"] is not None:
        lines.append(
            f"**overfitting from step {numbers['overfitting_from_step']}**: validation loss rose "
            f"{numbers['val_loss_final'] - numbers['val_loss_best']:.3f} nats above its best while the training "
            f"loss kept falling (rule: best validation step before the last evaluation, rise > "
            f"{numbers['overfit_margin']} nats, training loss lower at the end than at the best step); the best "
            "checkpoint is kept: `--step best`"
        )
    if numbers["val_loss_positions_shuffled"] is not None and numbers["val_loss_final"] is not None:
        lines.append(
            f"validation loss with the positional rows shuffled: {numbers['val_loss_positions_shuffled']:.3f} "
            f"({numbers['positions_shuffled_gap']:+.3f} nats: how much the model relies on where a token sits)"
        )
    lines.append(
        f"position locality (adjacent minus >= {length / 2:g} apart, mean cosine): "
        f"{numbers['position_locality_initial']:+.3f} untrained -> {numbers['position_locality']:+.3f} trained"
    )
    if numbers["median_tokens_per_sec"] is not None:
        lines.append(f"median throughput: {numbers['median_tokens_per_sec']:,.0f} tokens/s")
    lines.append(f"uniform-guess loss ln({numbers['num_classes']}) = {numbers['uniform_guess_loss']:.3f}")
    return lines


def _captions(numbers: dict, num_layers: int | None, length: int, pca_count: int) -> dict[str, str]:
    k = numbers["num_classes"]
    loss = (
        f"Cross-entropy of the next-token prediction (lower is better) against training step: blue is the "
        f"training loss, orange the loss on held-out validation text. The dashed line, ln({k:,}) = "
        f"{numbers['uniform_guess_loss']:.2f}, is a uniform guess over the {k:,} tokens the model can predict: an "
        "untrained model starts there, and anything below it has been learned. The star marks the lowest "
        "validation loss"
    )
    if numbers["val_loss_best"] is not None:
        loss += f" ({numbers['val_loss_best']:.3f} at step {numbers['val_loss_best_step']})"
    if numbers["overfitting_from_step"] is not None:
        loss += (
            f". The shaded steps after it are overfitting: validation loss rises while training loss falls, so "
            f"the model memorises the training text from step {numbers['overfitting_from_step']} on."
        )
    else:
        loss += "; the validation loss did not rise meaningfully after it, so there is no sign of overfitting."
    neighbours = (
        "For each probe token, its closest tokens by cosine similarity after subtracting the candidates' mean "
        "vector, before training (random vectors: the neighbours are arbitrary) and after. The subtitle gives the "
        "baseline: the cosine of a random pair of candidates. A neighbour well above it shares contexts with the "
        "probe in the training text (e.g. pronouns next to pronouns). Probes never seen in training have no "
        "meaningful neighbours and say so."
    )
    pca_caption = (
        f"The {pca_count} most frequent training tokens projected onto their first two principal components "
        "(the two directions along which these vectors vary most; the axis labels give the share of variance), "
        "before and after training. Before, the cloud is round noise; after, tokens used alike (function words, "
        "punctuation, names) drift together. Labels go to the most frequent tokens that fit without overlapping; "
        "⟨e2 80⟩ marks a token holding only part of a UTF-8 character (GPT-2 splits some characters, such as ’, "
        "across tokens)."
    )
    path = (
        f"The {length} positional vectors projected onto their first two principal components and joined in "
        "position order (0 is dark, the last position yellow; each point is labelled with its position). "
        "Untrained vectors are independent random draws, so the path jumps about; a trained table that has "
        "learned an order traces a smooth path, with each position next to its neighbours. PCA removes the "
        "table's mean vector first; the titles give its length and how far the positions lie from it."
    )
    if num_layers == 0:
        path += (
            " Without attention every position learns the same vector: the trained positions lie close to their "
            "common mean compared with its length, and what PCA shows of the small remainder is noise."
        )
    return {
        "Loss curves": loss,
        "Nearest neighbours before and after training": neighbours,
        "Token embeddings, first two principal components": pca_caption,
        "Positional embeddings: cosine similarity": _position_caption(numbers, num_layers, length),
        "Positional embeddings: the path through positions": path,
    }


def write_run_report(result: TrainResult, report_config: ml_collections.ConfigDict) -> pathlib.Path | None:
    """Writes ``report.md``, ``report.json``, their plots and the projector files into a finished run's workdir.

    Call it on every process (the tables are gathered from all of them); only
    process 0 writes.

    Args:
      result: what ``jaxembed.train.train_and_evaluate`` returned, with a workdir.
      report_config: ``config.report`` (probe tokens, neighbours, PCA and
        projector sizes).

    Returns:
      The path of ``report.md`` on process 0, else ``None``.

    Raises:
      ValueError: the run kept no workdir.
    """
    import jax

    from jaxembed.tokenizer import get_encoding

    if result.workdir is None:
        raise ValueError("the run has no workdir to write the report into; train with a workdir.")
    before_VxD, pos_before_LxD = result.tables(initial=True)
    after_VxD, pos_LxD = result.tables()
    if jax.process_index() != 0:
        return None
    active_ids = result.splits.active_ids
    return training_report(
        result.workdir,
        enc=get_encoding(result.config.data.tokenizer),
        metrics=result.metrics,
        before_VxD=before_VxD,
        after_VxD=after_VxD,
        pos_LxD=pos_LxD,
        pos_before_LxD=pos_before_LxD,
        token_counts_V=result.token_counts(),
        probe_tokens=report_config.probe_tokens,
        num_neighbors=report_config.num_neighbors,
        pca_tokens=report_config.pca_tokens,
        projector_tokens=report_config.projector_tokens,
        num_classes=None if active_ids is None else len(active_ids),
        num_layers=result.config.model.get("num_layers"),
        val_loss_positions_shuffled=result.val_loss_positions_shuffled,
    )
