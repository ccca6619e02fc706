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

import math
import os
import pathlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxembed.analysis import (
    Neighbors,
    format_neighbors,
    most_frequent,
    nearest_neighbors,
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

MAX_PCA_LABELS = 60


def _save(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
    FigureCanvasAgg(fig)  # Attaches an Agg canvas to this figure only; no global backend.
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
    points_Nx2, explained_2 = pca(np.asarray(table_VxD)[token_ids])
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
    with atomic_open(paths["embeddings"], "wb") as f:
        np.save(f, table_VxD)
    with atomic_open(paths["vectors"]) as f:
        np.savetxt(f, table_VxD[token_ids].reshape(len(token_ids), -1), fmt="%.9g", delimiter="\t")
    with atomic_open(paths["metadata"]) as f:
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
    with atomic_open(path) as f:
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
    tensorboard_step: int | None = None,
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
    if tensorboard_step is not None:  # the same pictures and table in TensorBoard (tensorboard --logdir runs/)
        from jaxembed import tensorboard

        tensorboard.write_projector(out, after_VxD, projector, [token_label(enc, i) for i in projector])
        with tensorboard.SummaryLog(out, resume_step=tensorboard_step) as tb:
            tb.write_images(tensorboard_step, {f"report/{pathlib.Path(n).stem}": out / n for n in images.values()})
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


def write_run_report(result: TrainResult, report_config: ml_collections.ConfigDict) -> pathlib.Path | None:
    """Writes ``report.md``, its plots and the projector files into a finished run's workdir.

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
    before_VxD, _ = result.tables(initial=True)
    after_VxD, pos_LxD = result.tables()
    if jax.process_index() != 0:
        return None
    return training_report(
        result.workdir,
        enc=get_encoding(result.config.data.tokenizer),
        metrics=result.metrics,
        before_VxD=before_VxD,
        after_VxD=after_VxD,
        pos_LxD=pos_LxD,
        token_counts_V=result.token_counts(),
        probe_tokens=report_config.probe_tokens,
        num_neighbors=report_config.num_neighbors,
        pca_tokens=report_config.pca_tokens,
        projector_tokens=report_config.projector_tokens,
        tensorboard_step=result.metrics[-1]["step"] if result.config.train.get("tensorboard", False) else None,
    )
