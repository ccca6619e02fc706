"""Position schemes side by side: one config trained once per ``model.position``, one page comparing them.

``compare_positions(config, workdir)`` trains ``config`` with each scheme of
``jaxembed.nn.positions.POSITIONS`` into ``workdir/<scheme>`` (each an ordinary run:
resumable, with its own report, readable by ``jaxembed neighbors`` and ``export``), then
writes ``workdir/compare.md`` and ``compare.json`` with ``loss_by_length.png`` (held-out loss
at ``L``, ``2L`` and ``4L``, one line per scheme) and ``positions.png`` (the learned and
sinusoidal tables' similarity maps next to each other). ``jaxembed compare`` runs it.

Example:
  >>> import tempfile
  >>> from jaxembed.config import named_config
  >>> config = named_config("tiny")
  >>> config.model.features, config.train.steps, config.train.eval_every = 8, 2, 1
  >>> with tempfile.TemporaryDirectory() as d:
  ...     page = compare_positions(config, d, text="to be or not to be " * 900, positions=("learned", "alibi"),
  ...                              progress=False)
  ...     sorted(json.loads((page.parent / "compare.json").read_text())["schemes"])
  ['alibi', 'learned']
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from collections.abc import Sequence

import ml_collections

from jaxembed.errors import InvalidArgumentError
from jaxembed.fileio import atomic_open
from jaxembed.nn.positions import POSITIONS, check_position
from jaxembed.report import captions
from jaxembed.report.plots import plot_loss_by_length, plot_position_maps
from jaxembed.report.writer import write_report, write_run_report

log = logging.getLogger(__name__)


def compare_positions(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    text: str | None = None,
    positions: Sequence[str] = POSITIONS,
    progress: bool = True,
) -> pathlib.Path:
    """Trains ``config`` once per position scheme into ``workdir/<scheme>`` and writes the comparison page.

    Every run has the same corpus, seed, steps and batches; only ``model.position`` differs. A
    scheme whose run is already complete is read back, not retrained (rerun to resume).

    Args:
      config: a training config (``jaxembed.config``); its ``model.position`` is replaced.
      workdir: the comparison's folder.
      text: train on this text instead of the configured corpus.
      positions: the schemes to compare (default: all of ``POSITIONS``, in that order).
      progress: progress bars on stderr.

    Returns:
      The path of ``workdir/compare.md`` (on process 0; every process trains).

    Raises:
      InvalidArgumentError: an unknown or repeated scheme, or none; and whatever
        ``train_and_evaluate`` raises for the config.
    """
    import jax

    from jaxembed.train.loop import train_and_evaluate

    positions = tuple(positions)
    if not positions or len(set(positions)) != len(positions):
        raise InvalidArgumentError(f"positions={positions!r}: name each scheme once, at least one.")
    for position in positions:
        check_position(position, "positions")
    out = pathlib.Path(workdir)
    schemes, tables = {}, {}
    for number, position in enumerate(positions, 1):
        run_config = ml_collections.ConfigDict(config.to_dict())
        run_config.model.position = position
        log.info("Position scheme %d of %d: model.position=%s -> %s", number, len(positions), position, out / position)
        start = time.perf_counter()
        result = train_and_evaluate(run_config, out / position, text=text, progress=progress)
        report_md = write_run_report(result, run_config.report)
        _, position_LxD = result.tables()
        if report_md is None:  # not process 0: it trains, process 0 writes
            continue
        # The run's report owns its numbers (report_numbers); the page quotes them.
        numbers = json.loads(report_md.with_suffix(".json").read_text())
        schemes[position] = {
            "val_loss": numbers["val_loss_final"],
            "val_loss_by_length": numbers["val_loss_by_length"],
            "position_locality": numbers["position_locality"],
            "positions_shuffled_gap": numbers["positions_shuffled_gap"],
            "steps": int(result.state.step),
            "seconds": time.perf_counter() - start,
        }
        if position_LxD is not None:
            tables[position] = position_LxD
    if jax.process_index() != 0:
        return out / "compare.md"
    return write_comparison(out, schemes, tables, trained_length=config.data.max_length)


def write_comparison(out: pathlib.Path, schemes: dict[str, dict], tables: dict, *, trained_length: int) -> pathlib.Path:
    """Writes ``compare.json``, ``compare.md`` and its two pictures from ``compare_positions``' numbers."""
    by_length = {
        name: {int(k): v for k, v in row["val_loss_by_length"].items() if v is not None}
        for name, row in schemes.items()
    }
    images = {
        "Validation loss against evaluation length": plot_loss_by_length(
            by_length, out / "loss_by_length.png", trained_length=trained_length
        ).name
    }
    names = {"learned": "learned (trained)", "sinusoidal": "sinusoidal (fixed)"}
    if tables:
        images["Positional tables"] = plot_position_maps(
            {names.get(k, k): v for k, v in tables.items()},
            out / "positions.png",
            title="Positional tables: cosine similarity between positions",
        ).name
    with atomic_open(out / "compare.json") as f:
        json.dump({"trained_length": trained_length, "schemes": schemes}, f, indent=2)
        f.write("\n")
    lengths = [trained_length * f for f in (1, 2, 4)]
    header = "scheme       " + "".join(f"{f'loss @ {n}':>13}" for n in lengths) + "     locality  shuffled gap"
    rows = [header]
    for name, row in schemes.items():
        cells = "".join(f"{_number(row['val_loss_by_length'].get(str(n))):>13}" for n in lengths)
        rows.append(
            f"{name:<13}{cells}{_number(row['position_locality'], '+.3f'):>13}"
            f"{_number(row['positions_shuffled_gap'], '+.3f'):>14}"
        )
    summary = [f"{_scheme_words(name)}; {row['steps']} steps" for name, row in schemes.items()]
    return write_report(
        out / "compare.md",
        title="Position schemes side by side",
        intro=(
            f"The same config, corpus, seed and steps, trained once per `model.position` (each run is a folder "
            f"here with its own report). The held-out loss is measured on windows of the trained length "
            f"{trained_length} and on windows two and four times as long, cut from the same held-out split; "
            "`-` marks what is not defined: a learned table has no rows past the trained length, and locality "
            "(adjacent minus distant positions, mean cosine) needs a table, and the shuffled-positions gap (the "
            "loss with the table's rows permuted, minus the loss) a learned one: a fixed sinusoidal table is not "
            "shuffled."
        ),
        summary_lines=summary,
        sections={"Validation loss by scheme": "\n".join(rows)},
        images=images,
        captions={
            "Validation loss against evaluation length": (
                "One line per scheme: held-out loss (lower is better) on windows of each length; the dashed line "
                "is the length trained on. The learned table is a single point: it has no vector for position "
                f"{trained_length} or later. A line that stays flat past the dashed line extrapolates (what ALiBi "
                "was designed for: its distance penalty is the same at any length); a line that climbs meets "
                "positions, or distances, it never saw in training."
            ),
            "Positional tables": (
                "The two schemes that add a table to the token vectors. The sinusoidal one is a formula: its band "
                "along the diagonal is there before any training. The learned one starts as noise and is banded "
                "only as far as training made it (nothing told it that 3 is next to 4). Rotary, ALiBi and none "
                "have no table to draw."
            ),
        },
    )


def _scheme_words(name: str) -> str:
    words = captions.POSITION_WORDS[name]
    # Words that already open with the scheme's name ("ALiBi: ...") would repeat it after "alibi: ".
    return words if words.lower().startswith(name) else f"{name}: {words}"


def _number(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


__all__ = ["compare_positions", "write_comparison"]
