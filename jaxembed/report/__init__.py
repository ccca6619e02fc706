"""What a run learned: numbers from the tables, the pictures, their captions, ``report.md``/``report.json``.

The last stage of the data flow (text -> data -> nn -> train -> report). One module per concept:
``analysis`` (numpy only: neighbours, locality, PCA, frequencies, and which tokens to probe),
``plots`` (matplotlib figures), ``captions`` (how to read each picture), ``writer``
(``write_run_report``), ``comparison`` (``compare_positions``: the position schemes side by side)
and ``reference`` (``write_reference``: a run's tables next to GPT-2's own).

Example:
  >>> import numpy as np
  >>> from jaxembed import report
  >>> round(report.uniform_guess_loss(50257), 3)
  10.825
"""

from jaxembed.report import analysis, captions, comparison, plots, reference, writer
from jaxembed.report.comparison import compare_positions
from jaxembed.report.plots import (
    plot_loss_by_length,
    plot_loss_curves,
    plot_neighbors,
    plot_pca,
    plot_position_maps,
    plot_position_paths,
    plot_position_pca,
    plot_position_similarity,
    uniform_guess_loss,
)
from jaxembed.report.reference import reference_numbers, write_reference
from jaxembed.report.writer import (
    export_projector,
    export_tables,
    report_numbers,
    training_report,
    write_report,
    write_run_report,
)

__all__ = [
    "analysis",
    "captions",
    "compare_positions",
    "comparison",
    "export_projector",
    "export_tables",
    "plot_loss_by_length",
    "plot_loss_curves",
    "plot_neighbors",
    "plot_pca",
    "plot_position_maps",
    "plot_position_paths",
    "plot_position_pca",
    "plot_position_similarity",
    "plots",
    "reference",
    "reference_numbers",
    "report_numbers",
    "training_report",
    "uniform_guess_loss",
    "write_reference",
    "write_report",
    "write_run_report",
    "writer",
]
