"""The run report's pictures: loss curves, neighbour tables, PCA maps, positional tables.

Each ``plot_*`` function draws numbers from ``jaxembed.report.analysis`` into one
PNG and returns its path. Plots use ``matplotlib.figure.Figure`` with the Agg
canvas directly, never pyplot, so they work headless and inside notebooks
without changing the backend or leaving figures open. Files are written
atomically (``jaxembed.fileio``). ``jaxembed.report.writer`` puts them together.

Example:
  >>> import tempfile
  >>> with tempfile.TemporaryDirectory() as d:
  ...     rows = [{"step": 0, "val_loss": 10.8}, {"step": 50, "train_loss": 6.1, "val_loss": 6.5}]
  ...     plot_loss_curves(rows, f"{d}/loss.png", vocab_size=50257).name
  'loss.png'
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxembed.errors import check_positive_int
from jaxembed.fileio import atomic_open
from jaxembed.report import analysis
from jaxembed.report.analysis import Neighbors, pca, position_similarity, token_label

if TYPE_CHECKING:
    import tiktoken

#: Most labels drawn per PCA panel; fewer when they would overlap.
MAX_PCA_LABELS = 40


def _save(fig: Figure, path: str | os.PathLike, *, tight: bool = True) -> pathlib.Path:
    FigureCanvasAgg(fig)  # Attaches an Agg canvas to this figure only; no global backend.
    if tight:
        fig.tight_layout()
    # tight_layout leaves a placeholder layout engine, and savefig lays out again with any engine
    # set: one whole draw more per picture (a fifth of the report's time), the same pixels.
    fig.set_layout_engine(None)
    with atomic_open(path, "wb") as f:
        # zlib level 1, not PIL's 6: the report's five pictures encode in half the time, 0-20% larger.
        fig.savefig(f, format="png", dpi=120, pil_kwargs={"compress_level": 1})
    return pathlib.Path(path)


#: Fonts tried, in order, for any character the first cannot draw (matplotlib >= 3.6 falls back
#: glyph by glyph): DejaVu (matplotlib's own), then CJK and emoji fonts where the machine has them.
_FALLBACK_WORDS = ("CJK", "Han Sans", "Gothic", "Mincho", "WenQuanYi", "Emoji", "Symbola")


@functools.lru_cache(maxsize=2)
def font_families(monospace: bool = False) -> tuple[str, ...]:
    """Font family names for token labels: DejaVu first, then every installed font covering CJK or emoji.

    Example:
      >>> font_families(monospace=True)[0]
      'DejaVu Sans Mono'
    """
    import logging

    from matplotlib import font_manager

    by_file = {}  # one family per font file: a .ttc often names several
    for f in sorted(font_manager.fontManager.ttflist, key=lambda f: f.name):
        if any(w in f.name for w in _FALLBACK_WORDS):
            by_file.setdefault(f.fname, f.name)
    extra = tuple(dict.fromkeys(by_file.values()))
    if extra:  # a fallback font with one weight only makes every lookup log "Failed to find font weight"
        logging.getLogger("matplotlib.font_manager").addFilter(_WeightNotice(extra))
    return ("DejaVu Sans Mono" if monospace else "DejaVu Sans", *extra)


class _WeightNotice:
    """Drops matplotlib's "Failed to find font weight ... for FAMILY" for jaxembed's fallback fonts only."""

    def __init__(self, families: tuple[str, ...]):
        self.families = families

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not ("Failed to find font weight" in message and any(f in message for f in self.families))


@functools.lru_cache(maxsize=4)
def _fonts(families: tuple[str, ...]) -> tuple:
    from matplotlib import font_manager, ft2font

    paths = dict.fromkeys(font_manager.findfont(font_manager.FontProperties(family=f)) for f in families)
    return tuple(ft2font.FT2Font(p) for p in paths)


def drawable(text: str, families: tuple[str, ...]) -> str:
    """``text`` with every character none of ``families`` can draw written as ``\\uXXXX`` (no empty boxes).

    Example:
      >>> drawable("to be", font_families()), drawable("\U0001f600", ("DejaVu Sans",))
      ('to be', '\\U0001f600')
    """
    fonts = _fonts(tuple(families))

    def ok(ch: str) -> bool:
        return ch in "\n\t" or any(font.get_char_index(ord(ch)) for font in fonts)

    return "".join(ch if ok(ch) else (f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}") for ch in text)


def _plot_label(enc: tiktoken.Encoding, token_id: int, *, monospace: bool = False) -> str:
    # Paired '$' would switch matplotlib into mathtext; escaped, it prints as '$'.
    return drawable(token_label(enc, token_id), font_families(monospace)).replace("$", r"\$")


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
        ax.plot(*zip(*train), label="train loss (mean of the steps since the previous point)", color="tab:blue")
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
    return math.log(check_positive_int(num_classes, "num_classes"))


#: Probe rows drawn in ``neighbors.png`` at most (600 probes made a 1,080 x 97,332 px picture).
MAX_NEIGHBOR_ROWS = 12


def plot_neighbors(
    enc: tiktoken.Encoding,
    before: Neighbors,
    after: Neighbors,
    query_ids: Sequence[int],
    path: str | os.PathLike,
    *,
    counts_V: np.ndarray | None = None,
    subtitle: str = "",
    measure: str = "centred cosine similarity",
    baseline: tuple[float, float] | None = None,
    columns: tuple[str, str] = ("before training", "after training"),
    before_baseline: tuple[float, float] | None = None,
    shared: Sequence[Collection[int]] | None = None,
) -> pathlib.Path:
    """Renders a probe | before training | after training table of neighbours.

    The title reads "Nearest neighbours by ``measure``": the default names what
    ``analysis.rank_neighbors`` (the report's and ``jaxembed neighbors``' rule)
    computes; pass e.g. ``measure="raw cosine similarity"`` for neighbours from
    ``analysis.nearest_neighbors(..., centre=False)``. With ``counts_V``, a probe
    never seen in training shows a note instead of neighbours. With ``baseline``
    (the trained table's random-pair cosine ``(mean, std)``), each
    after-training cosine is followed by ``analysis.sigmas_above`` it. At most
    ``MAX_NEIGHBOR_ROWS`` probes are drawn; the subtitle says so.

    ``columns`` names the two neighbour columns, for tables other than before and
    after training (e.g. this run | GPT-2); ``before_baseline`` gives the first column
    σ numbers too, against its own table's random-pair cosine. ``shared`` (one set of ids per
    probe) marks those neighbours with ``*`` in both columns: the ones the two tables agree on.

    Example:
      >>> from jaxembed.text.tokenizer import get_encoding
      >>> enc = get_encoding("gpt2")
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     plot_neighbors(enc, [[(1242, 0.1)]], [[(19338, 0.7)]], [14210], f"{d}/nn.png").name
      'nn.png'
    """
    if len(query_ids) > MAX_NEIGHBOR_ROWS:  # a bounded picture; report.md and report.json keep every probe
        note = f"the first {MAX_NEIGHBOR_ROWS} of {len(query_ids)} probes (all of them in report.md)"
        subtitle = f"{subtitle}\n{note}" if subtitle else note
        query_ids, before, after = query_ids[:MAX_NEIGHBOR_ROWS], before[:MAX_NEIGHBOR_ROWS], after[:MAX_NEIGHBOR_ROWS]
        shared = None if shared is None else shared[:MAX_NEIGHBOR_ROWS]
    k = max((len(row) for row in [*before, *after]), default=1) or 1
    fig = Figure(figsize=(9, 1.1 + len(query_ids) * (0.22 * k + 0.25)))
    ax = fig.add_subplot()
    ax.set_axis_off()
    title = f"Nearest neighbours by {measure}"
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontweight="bold", fontsize=10)

    def cell(row, query, baseline=None, marked=()):
        if counts_V is not None and counts_V[query] == 0:
            return "(never in the training text:\n no meaningful neighbours)"
        if not row:  # rank_neighbors leaves probes seen fewer than min_count times unranked
            return "(too rare in the training text:\n no meaningful neighbours)"
        lines = []
        for i, cos in row:
            sigma = None if baseline is None else analysis.sigmas_above(cos, baseline)
            lines.append(
                f"{_plot_label(enc, i, monospace=True)}  {cos:+.2f}"
                + ("" if sigma is None else f" ({sigma:.1f}σ)")
                + (" *" if i in marked else "")
            )
        return "\n".join(lines)

    cells = [
        [_plot_label(enc, q, monospace=True), cell(b, q, before_baseline, m), cell(a, q, baseline, m)]
        for q, b, a, m in zip(query_ids, before, after, shared or [()] * len(query_ids), strict=True)
    ]
    if not cells:  # a tiny corpus: no word occurs often enough to probe (report.md says so)
        cells = [["(no probe)", "no token occurs often enough", "in the training text to probe"]]
    table = ax.table(
        cellText=cells,
        colLabels=["probe token", *columns],
        colWidths=[0.2, 0.4, 0.4],
        cellLoc="left",
        loc="upper center",
    )
    table.auto_set_font_size(False)
    row_height = 0.95 / (len(cells) * k + 1)
    for (row, _), c in table.get_celld().items():
        c.set_fontsize(9)
        c.set_text_props(family=list(font_families(monospace=True)), fontweight="bold" if row == 0 else "normal")
        c.set_height(row_height * (1 if row == 0 else k))  # Fit k lines per probe.
    return _save(fig, path)


def _place_labels(ax, points_Nx2: np.ndarray, labels: Sequence[str], max_labels: int) -> list[int]:
    """Labels points in the given (priority) order where a label fits without covering another label or point.

    Each label tries eight spots around its point; a label that fits nowhere
    is left out, so dense clusters get fewer labels instead of a blob. A label's
    size is measured once; the spots are tried on its box, and only the labels
    placed become artists.
    Returns the indices of the labelled points.
    """
    renderer = ax.figure.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    xy_Nx2 = ax.transData.transform(points_Nx2)
    radius = 3.0  # display pixels around a marker that a label must not cover
    points_to_pixels = ax.figure.dpi / 72
    placed, labelled = [], []
    offsets = [(5, 3), (5, -11), (-5, 3), (-5, -11), (7, -4), (-7, -4), (0, 8), (0, -16)]
    style = {"fontsize": 8.5, "family": list(font_families()), "color": "black", "textcoords": "offset points"}
    for n, ((x, y), label) in enumerate(zip(points_Nx2, labels)):
        if len(labelled) >= max_labels:
            break
        probe = ax.annotate(label, (x, y), xytext=(0, 0), ha="left", **style)
        size = probe.get_window_extent(renderer)  # left-aligned at the point: where it sits relative to it
        probe.remove()
        width = size.width
        for dx, dy in offsets:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            shift_x = dx * points_to_pixels - {"left": 0.0, "right": width, "center": width / 2}[ha]
            box = size.translated(shift_x, dy * points_to_pixels).expanded(1.04, 1.08)
            inside = axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1
            covers_point = (
                (xy_Nx2[:, 0] > box.x0 - radius)
                & (xy_Nx2[:, 0] < box.x1 + radius)
                & (xy_Nx2[:, 1] > box.y0 - radius)
                & (xy_Nx2[:, 1] < box.y1 + radius)
            ).any()
            if inside and not covers_point and not any(box.overlaps(other) for other in placed):
                ax.annotate(label, (x, y), xytext=(dx, dy), ha=ha, **style)
                placed.append(box)
                labelled.append(n)
                break
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
      >>> from jaxembed.text.tokenizer import get_encoding
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
        {"after training": pos_LxD}
        if before_LxD is None
        else {"before training": before_LxD, "after training": pos_LxD}
    )
    return plot_position_maps(panels, path)


def plot_position_maps(
    tables: dict[str, np.ndarray],
    path: str | os.PathLike,
    *,
    title: str = "Positional embeddings: cosine similarity between positions",
) -> pathlib.Path:
    """One cosine-similarity heatmap per ``[L, D]`` table, side by side, titled by its key and locality.

    Every panel shares one colour scale (-1 to 1), so the same colour is the same cosine in
    each; the tables may have different lengths (each panel spans its own positions).

    Example:
      >>> import tempfile
      >>> from jaxembed.nn.positions import sinusoidal_table
      >>> with tempfile.TemporaryDirectory() as d:
      ...     plot_position_maps({"sinusoidal": np.asarray(sinusoidal_table(16, 8))}, f"{d}/maps.png").name
      'maps.png'
    """
    fig = Figure(figsize=(5.6 * len(tables) + 1.2, 5.4))
    axes = [fig.add_subplot(1, len(tables), i + 1) for i in range(len(tables))]
    for ax, (name, table) in zip(axes, tables.items()):
        # Up to a few hundred positions each cell is a visible square; a 1,024-position map has more
        # cells than the panel has pixels, and nearest-cell sampling would draw a moire, not the table.
        smooth = len(table) > 256
        image = ax.imshow(
            position_similarity(table),
            cmap="RdBu_r",
            vmin=-1,
            vmax=1,
            interpolation="antialiased" if smooth else "nearest",
        )
        ax.set(title=f"{name}\nlocality {analysis.position_locality(table):+.2f}", xlabel="position", ylabel="position")
    fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    fig.colorbar(image, ax=axes, label="cosine similarity", shrink=0.85)
    return _save(fig, path, tight=False)


def plot_loss_by_length(
    by_scheme: dict[str, dict[int, float]], path: str | os.PathLike, *, trained_length: int
) -> pathlib.Path:
    """Validation loss against evaluation length, one line per position scheme (the ALiBi paper's Figure 1).

    ``by_scheme`` maps a scheme to ``{length: loss}``; a scheme with only the trained length
    (a learned table) is drawn as a single point. A dashed line marks ``trained_length``.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     plot_loss_by_length({"learned": {16: 5.4}, "alibi": {16: 5.5, 32: 5.45, 64: 5.44}},
      ...                         f"{d}/by_length.png", trained_length=16).name
      'by_length.png'
    """
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    lengths = sorted({n for losses in by_scheme.values() for n in losses})
    for name, losses in by_scheme.items():
        xs = sorted(losses)
        ax.plot(xs, [losses[n] for n in xs], marker="o", label=name)
    ax.axvline(trained_length, color="0.5", linestyle="--", linewidth=1)
    ax.annotate(" trained length", (trained_length, 1), xycoords=("data", "axes fraction"), va="top", color="0.4")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set(
        xlabel="evaluation length (tokens per window)",
        ylabel="validation loss (nats per token)",
        title="Held-out loss at and past the trained length",
    )
    ax.legend(title="model.position")
    ax.grid(alpha=0.3)
    return _save(fig, path)


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
        {"after training": pos_LxD}
        if before_LxD is None
        else {"before training": before_LxD, "after training": pos_LxD}
    )
    return plot_position_paths(
        panels,
        path,
        title="Positional embeddings, first two principal components, in position order",
        colorbar=False,
    )


def plot_position_paths(
    tables: dict[str, np.ndarray],
    path: str | os.PathLike,
    *,
    title: str,
    three_d: Sequence[str] = (),
    colorbar: bool = True,
    projections: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> pathlib.Path:
    """One PCA path per ``[L, D]`` table, side by side: each table's principal components, joined in position order.

    Each panel has its own principal axes (``analysis.pca``). Points are coloured by position
    (dark first, yellow last; with ``colorbar``, a bar gives the scale) and every
    ``ceil(L / 32)``-th is labelled. The panels named in ``three_d`` draw the first three
    components in 3-D: GPT-2's 1,024 positions trace a helix there, which two axes flatten
    into an arc. Each title gives the table's locality and its mean vector's length against
    the positions' spread from it (PCA removes the mean, so a table collapsed to one vector
    looks no different from a spread one without these numbers).

    ``projections`` gives panels' PCA already computed, ``{name: (points_LxK, explained_K)}``
    from ``analysis.pca`` with ``K`` >= the panel's dimensions: an SVD of GPT-2's 1,024 x 768
    table takes seconds, so a caller that has one need not pay for it again.

    Example:
      >>> import tempfile
      >>> p_L = np.arange(64)[:, None]
      >>> helix_LxD = np.hstack([np.cos(p_L / 8), np.sin(p_L / 8), p_L / 64])
      >>> with tempfile.TemporaryDirectory() as d:
      ...     plot_position_paths({"helix": helix_LxD}, f"{d}/paths.png", title="t", three_d=["helix"]).name
      'paths.png'
    """
    fig = Figure(figsize=(5.8 * len(tables) + (0.6 if colorbar else 0), 5.6))
    for i, (name, table) in enumerate(tables.items()):
        dims = 3 if name in three_d else 2
        ax = fig.add_subplot(1, len(tables), i + 1, **({"projection": "3d"} if dims == 3 else {}))
        table = np.asarray(table, dtype=np.float64)
        points_LxK, explained_K = (projections or {}).get(name) or pca(table, k=dims)
        points_LxK = np.asarray(points_LxK)[:, :dims]  # a given projection may hold more components
        coords = points_LxK.T
        order_L = np.arange(len(table))
        ax.plot(*coords, "-", color="0.6", lw=1 if len(table) <= 64 else 0.6, zorder=1)
        dots = ax.scatter(
            *coords,
            c=order_L,
            cmap="viridis",
            s=36 if len(table) <= 64 else 8,
            zorder=2,
            edgecolors="black" if len(table) <= 64 else "none",
            linewidths=0.4,
        )
        # Up to 64 positions every point can carry its number; a longer path would be buried under
        # them, so it gets 8 labels and the colour (bar) for the rest.
        every = max(1, math.ceil(len(table) / 32)) if len(table) <= 64 else math.ceil(len(table) / 8)
        for pos in order_L[::every]:
            if dims == 3:
                ax.text(*points_LxK[pos], f" {pos}", fontsize=7)
            else:
                ax.annotate(str(pos), points_LxK[pos], xytext=(4, 4), textcoords="offset points", fontsize=8)
        mean_length = np.linalg.norm(table.mean(axis=0))
        spread = np.sqrt(((table - table.mean(axis=0)) ** 2).sum(axis=1).mean())
        ax.set_title(
            f"{name}: locality {analysis.position_locality(table):+.2f}\n"
            f"mean vector length {mean_length:.2f}, rms distance from it {spread:.2f}",
            fontsize=10,
        )
        ax.set_xlabel(f"PC1 ({explained_K[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({explained_K[1]:.0%} of variance)")
        if dims == 3:
            ax.set_zlabel(f"PC3 ({explained_K[2]:.0%} of variance)")
        else:
            ax.grid(alpha=0.3)
        if colorbar:
            fig.colorbar(dots, ax=ax, label="position", shrink=0.8, pad=0.12 if dims == 3 else 0.03)
    fig.suptitle(title, fontweight="bold")
    return _save(fig, path)
