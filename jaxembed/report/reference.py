"""GPT-2 reference: a run's trained tables next to GPT-2 124M's own ``wte`` and ``wpe``.

``write_reference(workdir)`` reads a run's token and position tables (as ``jaxembed export``
does, ``jaxembed.train.load_run``) and GPT-2's (``jaxembed.nn.gpt2_tables``: downloaded once,
157.5 MB, then read from the cache), and writes into the workdir:

- ``reference_positions.png``: the cosine-similarity map of the run's positions, of GPT-2's
  first ``L`` positions (the same window) and of all 1,024, on one colour scale;
- ``reference_position_pca.png``: GPT-2's 1,024 positions on their first three principal
  components (the helix) and two, next to the run's path;
- ``reference_neighbors.png``: the run's probes (those its report shows) with their nearest
  tokens in each table, ranked by one rule (``analysis.rank_neighbors``: centred cosine among
  the tokens seen at least ``min_count`` times in the run's training text, each table centred
  by its own mean over those candidates), with σ above each table's random pairs;
- ``reference.json`` (every number) and ``reference.md`` (the page, with captions), and a
  line in the run's ``report.md`` that links the page.

``reference_numbers`` computes the page's numbers from tables in memory (numpy only).

Example (small tables in memory; ``write_reference`` uses a run's and GPT-2's):
  >>> from jaxembed.text.tokenizer import get_encoding
  >>> rng = np.random.default_rng(0)
  >>> wte_VxD, run_VxD = rng.normal(size=(50257, 8)), rng.normal(size=(50257, 4))
  >>> wte_VxD[1] = wte_VxD[0] + 0.01  # GPT-2's '"' next to its '!'
  >>> p_P = np.arange(64)[:, None]
  >>> wpe_PxD = np.hstack([3 * np.cos(p_P / 10), 2 * np.sin(p_P / 10), p_P / 64, np.zeros((64, 5))])
  >>> counts_V = np.zeros(50257, int); counts_V[:40] = 5
  >>> numbers = reference_numbers(get_encoding("gpt2"), run_token_VxD=run_VxD, run_position_LxD=wpe_PxD[:8, :4],
  ...     wte_VxD=wte_VxD, wpe_PxD=wpe_PxD, counts_V=counts_V, probe_ids=[0], num_neighbors=2, context_length=8)
  >>> print(numbers["neighbors"][0]["token"], "->", numbers["neighbors"][0]["gpt2"][0]["token"])
  '!' -> '"'
  >>> numbers["neighbor_candidates"], numbers["run"]["position_locality"] is not None
  (40, True)
  >>> [round(x, 2) for x in numbers["gpt2"]["position_pca_explained"]]  # the helix: 3 components hold it all
  [0.69, 0.3, 0.01]
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from jaxembed.errors import InvalidArgumentError
from jaxembed.fileio import atomic_open, write_text_atomic
from jaxembed.nn.pretrained import DEFAULT_TIMEOUT, gpt2_cache_paths, gpt2_tables
from jaxembed.report import analysis, captions
from jaxembed.report.plots import plot_neighbors, plot_position_maps, plot_position_paths
from jaxembed.report.writer import write_report

if TYPE_CHECKING:
    import tiktoken

    from jaxembed.train.run import Run

log = logging.getLogger(__name__)

__all__ = ["REFERENCE_FILES", "reference_numbers", "write_reference"]

#: Every file ``write_reference`` writes into the workdir (it also adds one line to ``report.md``).
REFERENCE_FILES = (
    "reference.md",
    "reference.json",
    "reference_positions.png",
    "reference_position_pca.png",
    "reference_neighbors.png",
)


def _baseline(table_VxD: np.ndarray, candidates_C: np.ndarray) -> dict[str, float | None]:
    mean, std = analysis.random_pair_cosine(table_VxD, candidates_C, centre=True)
    raw_mean, raw_std = analysis.random_pair_cosine(table_VxD, candidates_C)
    finite = [None if not np.isfinite(x) else float(x) for x in (mean, std, raw_mean, raw_std)]
    return {"mean": finite[0], "std": finite[1], "raw_mean": finite[2], "raw_std": finite[3]}


def _pair(baseline: dict) -> tuple[float, float]:
    """``(mean, std)`` of a stored baseline, NaN where it is undefined (as ``analysis.sigmas_above`` takes it)."""
    return (float("nan"), float("nan")) if baseline["mean"] is None else (baseline["mean"], baseline["std"])


def _rows(enc: tiktoken.Encoding, row: list[tuple[int, float]], baseline: dict) -> list[dict]:
    pair = _pair(baseline)
    return [
        {
            "token": analysis.token_label(enc, i),
            "id": int(i),
            "cosine": float(cos),
            "sigma": analysis.sigmas_above(cos, pair),
        }
        for i, cos in row
    ]


def reference_numbers(
    enc: tiktoken.Encoding,
    *,
    run_token_VxD: np.ndarray,
    run_position_LxD: np.ndarray | None,
    wte_VxD: np.ndarray,
    wpe_PxD: np.ndarray,
    counts_V: np.ndarray,
    probe_ids: Sequence[int],
    context_length: int,
    num_neighbors: int = 5,
    min_count: int = analysis.DEFAULT_MIN_COUNT,
) -> dict:
    """The reference page's numbers: the run's tables against GPT-2's, as ``reference.json`` stores them.

    Args:
      enc: the tokenizer both tables index (GPT-2's).
      run_token_VxD: the run's token table, ``[V, D]``, one row per tokenizer id.
      run_position_LxD: the run's position table ``[L, D]``, or ``None`` (rope, alibi, none).
      wte_VxD: GPT-2's token table, ``[V, D']`` (``D'`` need not equal ``D``).
      wpe_PxD: GPT-2's position table, ``[P, D']`` (``P`` = 1,024).
      counts_V: how often each id occurs in the run's training text: the candidates are the ids
        seen at least ``min_count`` times (``analysis.neighbor_candidates``), for both tables.
      probe_ids: the tokens whose neighbours are listed (the run report's probes).
      context_length: the run's ``L``; GPT-2's locality is measured on its first ``min(L, P)``
        positions, the same window, and also on all ``P``.
      num_neighbors: neighbours per probe.
      min_count: the candidate rule's threshold (the run report's ``neighbor_min_count``).

    Returns:
      ``{"run": {...}, "gpt2": {...}, "neighbors": [...], "neighbor_candidates",
      "neighbor_min_count", "shared_neighbors", "listed_neighbors"}``. ``run`` and ``gpt2`` each hold
      ``features``, ``position_locality`` (``analysis.position_locality``; ``None`` without a
      table) and ``random_pair_cosine_centred`` (``{"mean", "std", "raw_mean", "raw_std"}`` over
      the candidates, centred by the table's own candidate mean, and raw); ``gpt2`` also
      ``positions``, ``position_locality_all`` (all ``P`` positions), ``position_pca_explained``
      (variance share of the first 3 components) and ``position_pca`` (``P x 3`` points,
      ``analysis.pca``). Each ``neighbors`` entry: the probe's ``token``, ``id``, ``count``, its
      ``run`` and ``gpt2`` lists (``{"token", "id", "cosine", "sigma"}``, σ against that
      table's own baseline) and ``shared`` (tokens in both lists).

    Raises:
      InvalidArgumentError: the tables index different vocabularies, or a table is not 2-D.
    """
    run_token_VxD, wte_VxD, wpe_PxD = (np.asarray(t) for t in (run_token_VxD, wte_VxD, wpe_PxD))
    counts_V = np.asarray(counts_V)
    for name, table in [("run_token_VxD", run_token_VxD), ("wte_VxD", wte_VxD), ("wpe_PxD", wpe_PxD)]:
        if table.ndim != 2:
            raise InvalidArgumentError(f"{name} has shape {table.shape}: need a 2-D table.")
    if not len(run_token_VxD) == len(wte_VxD) == len(counts_V):
        raise InvalidArgumentError(
            f"the run's token table has {len(run_token_VxD):,} rows, GPT-2's {len(wte_VxD):,} and the counts "
            f"{len(counts_V):,}: the same ids must mean the same tokens (train with data.tokenizer='gpt2')."
        )
    candidates_C = analysis.neighbor_candidates(counts_V, min_count)
    probe_ids = [int(q) for q in probe_ids]
    ours, theirs = _baseline(run_token_VxD, candidates_C), _baseline(wte_VxD, candidates_C)
    ranked_run = analysis.rank_neighbors(run_token_VxD, counts_V, probe_ids, num_neighbors, min_count)
    ranked_gpt2 = analysis.rank_neighbors(wte_VxD, counts_V, probe_ids, num_neighbors, min_count)
    neighbors = []
    for q, row_run, row_gpt2 in zip(probe_ids, ranked_run, ranked_gpt2, strict=True):
        theirs_ids = {i for i, _ in row_gpt2}
        neighbors.append(
            {
                "token": analysis.token_label(enc, q),
                "id": q,
                "count": int(counts_V[q]),
                "run": _rows(enc, row_run, ours),
                "gpt2": _rows(enc, row_gpt2, theirs),
                "shared": [analysis.token_label(enc, i) for i, _ in row_run if i in theirs_ids],
            }
        )
    shown = min(int(context_length), len(wpe_PxD))
    points_Px3, explained_3 = analysis.pca(wpe_PxD, k=3)
    return {
        "run": {
            "features": int(run_token_VxD.shape[1]),
            "context_length": int(context_length),
            "position_locality": None
            if run_position_LxD is None
            else analysis.position_locality(np.asarray(run_position_LxD)[:shown]),
            "random_pair_cosine_centred": ours,
        },
        "gpt2": {
            "features": int(wte_VxD.shape[1]),
            "positions": int(len(wpe_PxD)),
            "position_locality": analysis.position_locality(wpe_PxD[:shown]),
            "position_locality_all": analysis.position_locality(wpe_PxD),
            "random_pair_cosine_centred": theirs,
            "position_pca_explained": [float(x) for x in explained_3],
            "position_pca": points_Px3.tolist(),
        },
        "neighbor_min_count": int(min_count),
        "neighbor_candidates": int(len(candidates_C)),
        "neighbors": neighbors,
        "shared_neighbors": sum(len(e["shared"]) for e in neighbors),
        "listed_neighbors": sum(len(e["run"]) for e in neighbors),
    }


def _run_probes(run: Run) -> tuple[list[int], int]:
    """The run report's probes and candidate threshold: from its report.json, else chosen as the report does."""
    path = run.workdir / "report.json"
    try:
        numbers = json.loads(path.read_text(encoding="utf-8"))
        return [int(e["id"]) for e in numbers["neighbors"]], int(numbers["neighbor_min_count"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s is unreadable (%s); choosing the probes as the run report does.", path, e)
    probes = []
    for word in run.config.report.probe_tokens:
        try:
            probes += analysis.resolve_tokens(run.enc, [word])
        except ValueError:
            pass  # the report lists such words as skipped; there is nothing to probe
    chosen, _ = analysis.choose_probes(run.enc, run.token_counts_V, probes)
    return chosen, analysis.DEFAULT_MIN_COUNT


def _neighbor_lines(numbers: dict) -> str:
    lines = []
    for entry in numbers["neighbors"]:

        def listed(rows):
            return ", ".join(
                f"{n['token']} {n['cosine']:.2f}" + ("" if n["sigma"] is None else f" ({n['sigma']:.1f}σ)")
                for n in rows
            )

        lines += [
            f"{entry['token']} (seen {entry['count']:,} times)",
            f"  this run: {listed(entry['run'])}",
            f"  GPT-2:    {listed(entry['gpt2'])}",
            f"  in both:  {', '.join(entry['shared']) or '(none)'}",
        ]
    return "\n".join(lines) or "(no probe: no token occurs often enough in the training text)"


def _link_from_report(workdir: pathlib.Path) -> None:
    """Adds ``captions.REFERENCE_LINK`` as the last bullet of the run's report.md, once; never rewrites more."""
    path = workdir / "report.md"
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    if "(reference.md)" in text:
        return
    lines = text.split("\n")
    bullets = [i for i, line in enumerate(lines) if line.startswith("- ")]
    if not bullets:
        return  # not a report this module knows how to extend: leave it as it is
    end = bullets[0]
    while end + 1 < len(lines) and lines[end + 1].startswith("- "):
        end += 1
    lines.insert(end + 1, f"- {captions.REFERENCE_LINK}")
    write_text_atomic(path, "\n".join(lines))


def write_reference(
    workdir: str | os.PathLike,
    *,
    url: str | None = None,
    step: str | int = "best",
    cache: str | os.PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> pathlib.Path:
    """Writes ``reference.md``, ``reference.json`` and three pictures into a run's workdir: the run next to GPT-2.

    The run's tables come from the checkpoint ``step`` (``jaxembed.train.load_run``: the
    token table ``[V, D]``, the position table ``[L, D]``, computed for sinusoidal, none for
    rope/alibi/none); GPT-2's from ``jaxembed.nn.gpt2_tables`` (``wte`` ``[50257, 768]``,
    ``wpe`` ``[1024, 768]``). The probes are those of the run's ``report.json`` (else chosen as
    its report would, ``analysis.choose_probes``). Both tables are fetched before anything is
    written, so a failed download leaves the workdir as it was; every file is written
    atomically, and the run's ``report.md`` gains one bullet linking ``reference.md``.

    Args:
      workdir: a run's folder (``jaxembed train --workdir``).
      url: where GPT-2's ``model.safetensors`` is (default ``$JAXEMBED_GPT2_URL``, else the
        pinned Hugging Face file); only needed until the tables are cached.
      step: ``"best"`` (lowest validation loss), ``"latest"`` or a step number.
      cache: the folder of the cached GPT-2 tables (default ``jaxembed.text.cache_dir()``).
      timeout: seconds one network read may stall.

    Returns:
      The path of ``reference.md``.

    Raises:
      CheckpointError: ``workdir`` is not a run, or has no checkpoint for ``step``.
      InvalidArgumentError: the run's tokenizer is not GPT-2's (its ids would mean other tokens).
      PretrainedUnavailableError: GPT-2's tables are neither cached nor downloadable (one line
        naming the URL and the cache paths).

    Example (offline: a folder that is not a run fails before any download):
      >>> import tempfile
      >>> write_reference(tempfile.mkdtemp())  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxembed.train.checkpoint.CheckpointError: ... is not a jaxembed run: .../config.json is missing.
    """
    from jaxembed.train.run import load_run  # orbax and the model load only when a run is read

    run = load_run(workdir, step=step)
    if run.config.data.tokenizer != "gpt2":
        raise InvalidArgumentError(
            f"{run.workdir} was trained with the {run.config.data.tokenizer!r} tokenizer; GPT-2's token table "
            "is indexed by GPT-2's ids, so only a run with data.tokenizer='gpt2' can be compared with it."
        )
    wte_VxD, wpe_PxD = gpt2_tables(url=url, cache=None if cache is None else pathlib.Path(cache), timeout=timeout)
    probes, min_count = _run_probes(run)
    position, length = run.model.position, run.model.max_length
    numbers = reference_numbers(
        run.enc,
        run_token_VxD=run.token_VxD,
        run_position_LxD=run.position_LxD,
        wte_VxD=wte_VxD,
        wpe_PxD=wpe_PxD,
        counts_V=run.token_counts_V,
        probe_ids=probes,
        context_length=length,
        num_neighbors=run.config.report.num_neighbors,
        min_count=min_count,
    )
    numbers["run"].update({"workdir": str(run.workdir), "step": int(run.step), "position": position})
    paths = gpt2_cache_paths(cache=None if cache is None else pathlib.Path(cache))
    numbers["gpt2"]["tables"] = {name: str(p) for name, p in paths.items()}
    out = run.workdir
    images = _draw(run, numbers, wpe_PxD, out)
    with atomic_open(out / "reference.json") as f:
        json.dump(numbers, f, indent=2)
        f.write("\n")
    page = write_report(
        out / "reference.md",
        title="This run next to GPT-2's own tables",
        intro=(
            "GPT-2 small (124M parameters, 2019) learned a token table `wte` (50,257 x 768) and a position table "
            "`wpe` (1,024 x 768) the same way this run learns its own: from random vectors, by predicting the "
            "next token, only on far more text (about 40 GB of web pages) for far longer. Its tables show what "
            "this run's can become. Every number below is in `reference.json`; this run's side is the checkpoint "
            f"of step {run.step} (the tables `jaxembed export` writes)."
        ),
        summary_lines=_summary(numbers),
        sections={captions.REFERENCE_NEIGHBORS + " (text)": _neighbor_lines(numbers)},
        images=images,
        captions=captions.reference_captions(numbers),
    )
    _link_from_report(out)
    return page


def _summary(numbers: dict) -> list[str]:
    run, gpt2 = numbers["run"], numbers["gpt2"]
    shown = min(run["context_length"], gpt2["positions"])
    ours, theirs = run["random_pair_cosine_centred"], gpt2["random_pair_cosine_centred"]
    lines = [
        f"this run: {run['workdir']}, step {run['step']}, model.position = {run['position']}, "
        f"{run['context_length']} positions, {run['features']} features",
        f"GPT-2 124M: {gpt2['positions']:,} positions, {gpt2['features']} features, read from "
        f"{gpt2['tables']['wte']} and {gpt2['tables']['wpe']}",
    ]
    if run["position_locality"] is None:
        lines.append(
            f"position locality over the first {shown} positions: GPT-2 {gpt2['position_locality']:+.3f} "
            f"(this run has none: model.position = {run['position']}); GPT-2 over all {gpt2['positions']:,}: "
            f"{gpt2['position_locality_all']:+.3f}"
        )
    else:
        lines.append(
            f"position locality over the first {shown} positions: this run {run['position_locality']:+.3f}, "
            f"GPT-2 {gpt2['position_locality']:+.3f}; GPT-2 over all {gpt2['positions']:,}: "
            f"{gpt2['position_locality_all']:+.3f}"
        )
    if ours["mean"] is not None:
        lines.append(
            f"random pair of the {numbers['neighbor_candidates']:,} candidates, centred cosine: this run "
            f"{captions.signed(ours['mean'], 3)} ± {ours['std']:.3f}, GPT-2 {captions.signed(theirs['mean'], 3)} "
            f"± {theirs['std']:.3f}"
        )
    lines.append(
        f"neighbours shared with GPT-2: {numbers['shared_neighbors']} of the {numbers['listed_neighbors']} "
        f"listed for {len(numbers['neighbors'])} probes"
    )
    return lines


def _draw(run: Run, numbers: dict, wpe_PxD: np.ndarray, out: pathlib.Path) -> dict[str, str]:
    """The page's three pictures: {heading: file name}."""
    shown = min(run.model.max_length, len(wpe_PxD))
    total = len(wpe_PxD)
    ours = f"this run ({run.model.position}, step {run.step}): {shown} positions"
    maps = {} if run.position_LxD is None else {ours: run.position_LxD[:shown]}
    maps |= {f"GPT-2: its first {shown} positions": wpe_PxD[:shown], f"GPT-2: all {total:,} positions": wpe_PxD}
    # Each title says how many positions its locality is over: the run's L is not GPT-2's 1,024.
    three = f"GPT-2, all {total:,} positions, 3 components"
    gpt2_Px3 = np.asarray(numbers["gpt2"]["position_pca"])
    paths = {three: wpe_PxD, f"GPT-2, all {total:,} positions, 2 components": wpe_PxD}
    if run.position_LxD is not None:
        paths[f"this run, {len(run.position_LxD)} positions"] = run.position_LxD
    baseline = {side: _pair(numbers[side]["random_pair_cosine_centred"]) for side in ("run", "gpt2")}
    ids = [e["id"] for e in numbers["neighbors"]]
    rows = {side: [[(n["id"], n["cosine"]) for n in e[side]] for e in numbers["neighbors"]] for side in baseline}
    subtitle = (
        f"both columns rank the same {numbers['neighbor_candidates']:,} candidates (tokens seen >= "
        f"{numbers['neighbor_min_count']} times in this run's text),\neach table centred by its own mean; "
        "σ: standard deviations above that table's random-pair mean\n*: a neighbour in both columns"
    )
    # A title must not promise a panel that is not there.
    whose = (
        "this run and GPT-2"
        if run.position_LxD is not None
        else f"GPT-2 only (this run has no position table: model.position = {run.model.position})"
    )
    shared = [{n["id"] for n in e["run"]} & {n["id"] for n in e["gpt2"]} for e in numbers["neighbors"]]
    return {
        captions.REFERENCE_POSITIONS: plot_position_maps(
            maps, out / "reference_positions.png", title=f"Cosine similarity between positions: {whose}"
        ).name,
        captions.REFERENCE_PATH: plot_position_paths(
            paths,
            out / "reference_position_pca.png",
            title=f"Positions on their own principal components, joined in order: {whose}",
            three_d=[three],
            # reference.json's projection (3 components), for both GPT-2 panels: one SVD, not three.
            projections=dict.fromkeys(
                list(paths)[:2], (gpt2_Px3, np.asarray(numbers["gpt2"]["position_pca_explained"]))
            ),
        ).name,
        captions.REFERENCE_NEIGHBORS: plot_neighbors(
            run.enc,
            rows["run"],
            rows["gpt2"],
            ids,
            out / "reference_neighbors.png",
            counts_V=run.token_counts_V,
            subtitle=subtitle,
            baseline=baseline["gpt2"],
            before_baseline=baseline["run"],
            columns=(f"this run (step {run.step})", "GPT-2 124M"),
            shared=shared,
        ).name,
    }
