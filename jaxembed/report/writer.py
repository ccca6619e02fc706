"""The run report: ``report.md``, ``report.json``, their pictures and the projector files.

``write_run_report(result, config.report)`` is what ``jaxembed train`` calls:
it computes the run's numbers with ``jaxembed.report.analysis``, draws them with
``jaxembed.report.plots``, explains them with ``jaxembed.report.captions`` and writes a
Markdown report and a JSON file of every number beside the pictures. Every
file is written atomically (``jaxembed.fileio``). The ``plot_*`` functions
are re-exported here for existing callers.

Example:
  >>> import tempfile
  >>> with tempfile.TemporaryDirectory() as d:
  ...     out = write_report(f"{d}/report.md", title="Run", summary_lines=["loss 5.2"], images={})
  ...     out.read_text().splitlines()[0]
  '# Run'
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from jaxembed.errors import InvalidArgumentError, JaxembedError
from jaxembed.fileio import atomic_open
from jaxembed.report import analysis, captions
from jaxembed.report.analysis import choose_probes, format_neighbors, most_frequent, resolve_tokens, token_label
from jaxembed.report.plots import (
    plot_loss_curves,
    plot_neighbors,
    plot_pca,
    plot_position_pca,
    plot_position_similarity,
    uniform_guess_loss,
)

if TYPE_CHECKING:
    import ml_collections
    import tiktoken

    from jaxembed.train.loop import TrainResult

__all__ = [
    "ReportWriteError",
    "export_projector",
    "export_tables",
    "report_numbers",
    "training_report",
    "write_report",
    "write_run_report",
]


class ReportWriteError(JaxembedError, OSError):
    """A report file cannot be written; the run itself (checkpoints, metrics) is complete."""


def export_projector(
    enc: tiktoken.Encoding, table_VxD: np.ndarray, token_ids: Sequence[int], outdir: str | os.PathLike
) -> dict[str, pathlib.Path]:
    r"""Writes files for the TensorBoard / projector.tensorflow.org embedding viewer.

    ``vectors.tsv`` holds the rows for ``token_ids`` (the full table is
    ``export_tables``' ``token_embeddings.npy``); ``metadata.tsv`` a ``token<TAB>id`` header (the
    projector wants one for multi-column metadata), then one repr-escaped
    token per row, so tabs and newlines inside tokens cannot break the TSV.

    Example:
      >>> from jaxembed.text.tokenizer import get_encoding
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
    paths = {name: outdir / f"{name}.tsv" for name in ("vectors", "metadata")}
    with atomic_open(paths["vectors"]) as f:
        np.savetxt(f, table_VxD[token_ids].reshape(len(token_ids), -1), fmt="%.9g", delimiter="\t")
    with atomic_open(paths["metadata"]) as f:
        f.write("token\tid\n")
        f.writelines(f"{token_label(enc, i)}\t{i}\n" for i in token_ids)
    return paths


def export_tables(
    token_VxD: np.ndarray, position_LxD: np.ndarray | None, outdir: str | os.PathLike
) -> dict[str, pathlib.Path]:
    """Writes ``token_embeddings.npy`` [V, D] and ``position_embeddings.npy`` [L, D], float32, for numpy users.

    ``position_LxD=None`` (rotary, ALiBi, no positions: no table) writes the token table alone.

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
        if table is None:
            continue
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
    pos_LxD: np.ndarray | None,
    pos_before_LxD: np.ndarray | None,
    token_counts_V: np.ndarray,
    num_classes: int,
    val_loss_positions_shuffled: float | None = None,
    min_count: int = analysis.DEFAULT_MIN_COUNT,
    position: str = "learned",
    val_loss_by_length: dict[int, float] | None = None,
) -> dict:
    """The run's numbers as ``report.json`` stores them (JSON-safe: NaN becomes ``None``).

    Keys: ``steps``; ``num_classes`` and ``uniform_guess_loss`` (ln of it);
    ``val_loss_initial``, ``val_loss_final``, ``val_loss_best``,
    ``val_loss_best_step``, ``overfitting_from_step`` and the overfitting rule's inputs
    ``val_evaluations``, ``val_loss_noise``, ``overfit_margin`` (the margin used),
    ``overfit_margin_floor``, ``overfit_evals_above`` and ``overfit_min_evals``
    (``analysis.val_loss_summary``); ``val_loss_positions_shuffled`` and
    ``positions_shuffled_gap`` (shuffled minus final: what the model relies on
    position); ``position`` (the scheme, ``model.position``); ``position_locality`` and
    ``position_locality_initial`` (``analysis.position_locality`` of the trained and
    untrained tables; ``None`` for schemes without a table); ``val_loss_by_length``
    (``{"16": loss, "32": ..., "64": ...}``: held-out loss by evaluation length, only the
    trained length for a learned table);
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
        "val_loss_positions_shuffled": shuffled,
        "positions_shuffled_gap": None if shuffled is None or final is None else shuffled - final,
        "position": position,
        "position_locality": None if pos_LxD is None else analysis.position_locality(pos_LxD),
        "position_locality_initial": None if pos_before_LxD is None else analysis.position_locality(pos_before_LxD),
        "val_loss_by_length": {str(k): _finite_or_none(float(v)) for k, v in (val_loss_by_length or {}).items()},
        "neighbor_min_count": int(min_count),
        "neighbor_candidates": int(len(candidates_C)),
        "random_pair_cosine": {"mean": _finite_or_none(raw[0]), "std": _finite_or_none(raw[1])},
        "random_pair_cosine_centred": {"mean": _finite_or_none(centred[0]), "std": _finite_or_none(centred[1])},
        "median_tokens_per_sec": float(np.median(speeds)) if speeds else None,
    }
    return {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in numbers.items()}


def training_report(
    workdir: str | os.PathLike,
    *,
    enc: tiktoken.Encoding,
    metrics: Sequence[dict],
    before_VxD: np.ndarray,
    after_VxD: np.ndarray,
    pos_LxD: np.ndarray | None,
    token_counts_V: np.ndarray,
    probe_tokens: Sequence[str],
    num_neighbors: int = 5,
    pca_tokens: int = 150,
    projector_tokens: int = 2000,
    min_count: int = analysis.DEFAULT_MIN_COUNT,
    probe_min_count: int = analysis.PROBE_MIN_COUNT,
    pos_before_LxD: np.ndarray | None = None,
    num_classes: int | None = None,
    num_layers: int | None = None,
    val_loss_positions_shuffled: float | None = None,
    tensorboard_step: int | None = None,
    validation_source: str | None = None,
    val_tokens_evaluated: int | None = None,
    position: str = "learned",
    context_length: int | None = None,
    val_loss_by_length: dict[int, float] | None = None,
    samples: dict[str, str] | None = None,
) -> pathlib.Path:
    """Writes ``workdir/report.md`` and ``report.json`` with their PNGs and projector files.

    Neighbours come from ``analysis.rank_neighbors``: centred cosine among
    ``analysis.neighbor_candidates(token_counts_V, min_count)``, the same rule
    ``jaxembed neighbors`` uses. Probes are ``analysis.choose_probes``: the
    configured ones seen at least ``probe_min_count`` times, then frequent content
    words; the summary names the configured ones dropped, and probe words
    that are not single GPT-2 tokens are listed as skipped. Each trained
    neighbour's cosine is also given in standard deviations above the
    random-pair baseline (``analysis.sigmas_above``; ``sigma`` in ``report.json``).

    Args:
      pos_before_LxD: the untrained positional table (default: ``pos_LxD``'s
        shape of zeros is meaningless, so pass it; ``None`` draws only the
        trained table and reports its locality as the initial one too).
      num_classes: how many tokens the model chooses between (``K`` with
        ``model.active_vocab``; default: the tokenizer's vocabulary).
      num_layers: ``config.model.num_layers``, for the positions caption.
      val_loss_positions_shuffled: ``TrainResult.val_loss_positions_shuffled``.
      validation_source: where the held-out split came from, in words
        (``splits.describe_validation``): a summary line, and
        ``validation_source`` in ``report.json``.
      val_tokens_evaluated: ``TrainResult.val_tokens_evaluated``, the held-out tokens each
        validation loss is the mean over (said in the same summary line; ``report.json`` too).
      position: ``model.position``; rotary, ALiBi and none have no table
        (``pos_LxD=None``): the position pictures are left out and the report says why.
      context_length: the trained context ``L`` (default: ``len(pos_LxD)``).
      val_loss_by_length: ``TrainResult.val_loss_by_length``: a table in the report.
      samples: ``{"prompt", "before", "after", "settings"}``: text sampled from the
        untrained and the trained model (``run_samples``), shown side by side.

    Example:
      >>> import tempfile
      >>> from jaxembed.text.tokenizer import get_encoding
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
    if context_length is None:
        if pos_LxD is None:
            raise InvalidArgumentError("training_report needs context_length when pos_LxD is None.")
        context_length = len(pos_LxD)
    probes, skipped = [], []
    for word in probe_tokens:
        try:
            probes += resolve_tokens(enc, [word])
        except ValueError as e:
            skipped.append(f"{word!r}: {e}")
    # Probes this corpus uses often enough to have learned neighbours; never an empty table.
    probes, dropped = choose_probes(enc, token_counts_V, probes, min_count=probe_min_count)
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
        position=position,
        val_loss_by_length=val_loss_by_length,
    )
    numbers["num_layers"] = num_layers
    numbers["validation_source"] = validation_source
    numbers["val_tokens_evaluated"] = val_tokens_evaluated
    raw, centred = numbers["random_pair_cosine"], numbers["random_pair_cosine_centred"]
    sigma_baseline = (centred["mean"], centred["std"]) if centred["mean"] is not None else (float("nan"), float("nan"))
    numbers["neighbors"] = [
        {
            "token": token_label(enc, q),
            "id": int(q),
            "count": int(token_counts_V[q]),
            "neighbors": [
                {
                    "token": token_label(enc, i),
                    "id": i,
                    "cosine": cos,
                    "sigma": analysis.sigmas_above(cos, sigma_baseline),
                }
                for i, cos in row
            ],
        }
        for q, row in zip(probes, after)
    ]
    numbers["probe_min_count"] = int(probe_min_count)
    numbers["probes_dropped"] = [
        {"token": token_label(enc, q), "id": int(q), "count": int(token_counts_V[q])} for q in dropped
    ]
    frequent = most_frequent(token_counts_V, pca_tokens)
    baseline = (
        f"random pair of candidates in the trained table: centred {_signed(centred['mean'])} ± {centred['std']:.2f} "
        f"(raw cosine {_signed(raw['mean'])} ± {raw['std']:.2f})"
        if centred["mean"] is not None
        else "fewer than two candidates"
    )
    # The picture's subtitle also says what the σ after each trained cosine means, and its ceiling.
    sigma_note = (
        f"\n(σ: standard deviations of that random-pair cosine above its mean; at most "
        f"{(1 - centred['mean']) / centred['std']:.1f}σ on this table)"
        if centred["mean"] is not None and centred["std"]
        else ""
    )
    length = context_length
    images = {
        captions.LOSS: plot_loss_curves(metrics, out / "loss.png", vocab_size=num_classes).name,
        captions.NEIGHBORS: plot_neighbors(
            enc,
            before,
            after,
            probes,
            out / "neighbors.png",
            counts_V=token_counts_V,
            subtitle=baseline + sigma_note,
            baseline=sigma_baseline,
        ).name,
        captions.PCA: plot_pca(
            enc,
            after_VxD,
            frequent,
            out / "pca.png",
            before_VxD=before_VxD,
            title=f"PCA of the {len(frequent)} most frequent tokens",
        ).name,
    }
    if pos_LxD is not None:
        # A fixed (sinusoidal) table is the same before and after: draw it once.
        pos_before = None if position == "sinusoidal" else pos_before_LxD
        images[captions.POSITIONS] = plot_position_similarity(
            pos_LxD, out / "positions.png", before_LxD=pos_before
        ).name
        images[captions.POSITION_PATH] = plot_position_pca(
            pos_LxD, out / "positions_pca.png", before_LxD=pos_before
        ).name
    projector = most_frequent(token_counts_V, projector_tokens)
    export_projector(enc, after_VxD, projector, out / "projector")
    export_tables(after_VxD, pos_LxD, out / "projector")
    if tensorboard_step is not None:  # the same pictures and table in TensorBoard (tensorboard --logdir runs/)
        from jaxembed.train import tensorboard

        tensorboard.write_projector(out, after_VxD, projector, [token_label(enc, i) for i in projector])
        with tensorboard.SummaryLog(out, resume_step=tensorboard_step) as tb:
            tb.write_images(tensorboard_step, {f"report/{pathlib.Path(n).stem}": out / n for n in images.values()})
    picture_captions = captions.captions(numbers, num_layers, length, len(frequent))
    summary = captions.summary_lines(numbers, length)
    if (out / "reference.md").is_file():  # a rewritten report keeps its link to `jaxembed reference`'s page
        summary.append(captions.REFERENCE_LINK)
    sections = {
        "Nearest neighbours before training": format_neighbors(
            enc, probes, before, token_counts_V, min_count=min_count
        ),
        "Nearest neighbours after training": format_neighbors(
            enc, probes, after, token_counts_V, baseline=sigma_baseline, min_count=min_count
        ),
    }
    if not probes:
        none = f"(no token occurs at least {probe_min_count} times in the training text: nothing to probe)"
        sections = dict.fromkeys(sections, none)
    if skipped:
        sections["Skipped probes"] = "\n".join(skipped)
    if samples:
        numbers["samples"] = samples
        # JSON quoting: always double quotes, newlines shown as \n (repr switches quote style).
        prompt, quoted = samples["prompt"], lambda s: json.dumps(s, ensure_ascii=False)
        after = samples["after"][len(prompt) :]
        text = (
            f"prompt:          {quoted(prompt)}\n"
            f"before training: {quoted(prompt)} + {quoted(samples['before'][len(prompt) :])}\n"
            f"after training:  {quoted(prompt)} + {quoted(after)}"
        )
        note = captions.blank_sample_note(after, analysis.blank_token_share(enc, token_counts_V))
        sections[f"Text from the model ({samples['settings']})"] = text + (f"\n\n{note}" if note else "")
    if numbers["val_loss_by_length"]:
        sections[captions.BY_LENGTH] = captions.by_length_table(numbers["val_loss_by_length"], position, length)
    intro = (
        f"Neighbours are ranked by *centred* cosine among the {numbers['neighbor_candidates']:,} tokens seen at "
        f"least {min_count} times in training (`analysis.neighbor_candidates`, the same rule as "
        "`jaxembed neighbors`): the mean vector of those candidates is subtracted first, because trained token "
        f"vectors share a common direction (raw cosine of a random pair: {raw['mean']:+.2f}) that would make "
        "every token look like every other. Read a neighbour's cosine against the baseline, the cosine of a "
        f"{baseline}. {captions.sigma_sentence(centred)} All numbers are in `report.json`."
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
        captions=picture_captions,
    )


def write_run_report(result: TrainResult, report_config: ml_collections.ConfigDict) -> pathlib.Path | None:
    """Writes ``report.md``, ``report.json``, their plots and the projector files into a finished run's workdir.

    Call it on every process (the tables are gathered from all of them); only
    process 0 writes.

    Args:
      result: what ``jaxembed.train.loop.train_and_evaluate`` returned, with a workdir.
      report_config: ``config.report`` (probe tokens, neighbours, PCA and
        projector sizes).

    Returns:
      The path of ``report.md`` on process 0, else ``None``.

    Raises:
      InvalidArgumentError: the run kept no workdir.
      ReportWriteError: a report file cannot be written (the message names it and says the
        checkpoints are safe and how to finish the report).
    """
    import jax

    if result.workdir is None:
        raise InvalidArgumentError("the run has no workdir to write the report into; train with a workdir.")
    before_VxD, pos_before_LxD = result.tables(initial=True)
    after_VxD, pos_LxD = result.tables()
    if jax.process_index() != 0:
        return None
    samples = run_samples(result) if jax.process_count() == 1 else None
    active_ids = result.splits.active_ids
    try:
        return _training_report_of(
            result, report_config, before_VxD, after_VxD, pos_before_LxD, pos_LxD, active_ids, samples
        )
    except OSError as e:
        last = int(result.state.step)
        free = shutil.disk_usage(result.workdir).free / 2**20
        raise ReportWriteError(
            f"could not write {e.filename or 'a report file'} ({e.strerror or e}; {free:,.1f} MiB free there). "
            f"The run's checkpoints are "
            f"complete (step {last}); fix the problem (e.g. free disk space) and rerun the same command: it "
            "trains nothing more and writes the report."
        ) from None


#: The report's text samples: the prompt is the first tokens of the held-out split, so it is in
#: the corpus's own words (and, with ``model.active_vocab``, in the model's vocabulary).
SAMPLE_PROMPT_TOKENS, SAMPLE_TOKENS = 4, 30


def run_samples(result: TrainResult) -> dict[str, str] | None:
    """Text sampled from the untrained and the trained model, from the same prompt and seed.

    The prompt is the first ``SAMPLE_PROMPT_TOKENS`` held-out tokens; ``SAMPLE_TOKENS`` tokens
    follow at ``nn.sampling``'s suggested temperature and top-k (``jaxembed sample``'s defaults) and the run's
    seed (``jaxembed.nn.sampling.generate``: one compiled step for both). ``None`` when the
    held-out split is shorter than the prompt or the run kept no untrained params.
    """
    from jaxembed.nn.sampling import SUGGESTED_TEMPERATURE, SUGGESTED_TOP_K, generate
    from jaxembed.text.tokenizer import get_encoding

    val_ids = np.asarray(result.splits.val_ids)
    if result.initial_params is None or len(val_ids) < SAMPLE_PROMPT_TOKENS:
        return None
    prompt = val_ids[:SAMPLE_PROMPT_TOKENS]
    active_ids = result.splits.active_ids
    enc = get_encoding(result.config.data.tokenizer)

    def text(ids):
        ids = np.asarray(ids) if active_ids is None else np.asarray(active_ids)[ids]
        return enc.decode([int(i) for i in ids])

    settings = dict(temperature=SUGGESTED_TEMPERATURE, top_k=SUGGESTED_TOP_K, seed=result.config.seed)
    before, after = (
        generate(result.model, params, prompt, SAMPLE_TOKENS, **settings)
        for params in (result.initial_params, result.state.params)
    )
    return {
        "prompt_ids": [int(i) for i in prompt],  # model ids (indices into active_ids with active_vocab)
        "prompt": text(prompt),
        "before": text(prompt) + text(before),
        "after": text(prompt) + text(after),
        "settings": f"prompt: the first {SAMPLE_PROMPT_TOKENS} held-out tokens; {SAMPLE_TOKENS} tokens at "
        f"temperature {SUGGESTED_TEMPERATURE}, top-k {SUGGESTED_TOP_K}, seed {result.config.seed}",
    }


def _training_report_of(
    result, report_config, before_VxD, after_VxD, pos_before_LxD, pos_LxD, active_ids, samples=None
):
    from jaxembed.data.splits import describe_validation
    from jaxembed.text.tokenizer import get_encoding

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
        num_layers=result.config.model.num_layers,
        val_loss_positions_shuffled=result.val_loss_positions_shuffled,
        position=result.model.position,
        context_length=result.model.max_length,
        val_loss_by_length=result.val_loss_by_length,
        samples=samples,
        # A rerun of a finished run trains nothing: its pictures are in TensorBoard already.
        tensorboard_step=result.metrics[-1]["step"]
        if result.config.train.tensorboard and result.start_step < result.metrics[-1]["step"]
        else None,
        validation_source=describe_validation(result.splits, result.config.data.val_fraction),
        val_tokens_evaluated=result.val_tokens_evaluated,
    )
