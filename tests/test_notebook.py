"""The teaching notebook: its committed outputs match its source, and it runs.

``notebooks/token_embeddings.ipynb`` is committed with outputs (so it renders on
GitHub) and paired with ``notebooks/token_embeddings.py`` (jupytext percent
format, the reviewable source). Edit the ``.py``, then rebuild and execute the
``.ipynb`` from it, offline, with::

  python tests/test_notebook.py

The execution test runs a copy in memory, offline (``$JAXEMBED_CORPUS`` points
at the shared corpus, ``$JAXEMBED_GPT2_URL`` at a file that is not there, so Part 8
prints its note instead of fetching GPT-2's table), and never rewrites the committed
file. Part 8's branch with the table runs on a local stand-in for GPT-2's checkpoint.
"""

from __future__ import annotations

import ast
import copy
import math
import os
import pathlib
import re
import sys
import tempfile
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
IPYNB = NOTEBOOKS / "token_embeddings.ipynb"
PAIRED_PY = NOTEBOOKS / "token_embeddings.py"
SHARED_CORPUS = pathlib.Path(__file__).resolve().parents[2] / "shared/data/romeo_juliet_gutenberg.txt"
MAX_BYTES = 1_500_000
# Where Part 8 looks for GPT-2's checkpoint when the notebook runs here: no file, so it takes the
# offline branch on any machine and nothing is downloaded.
NO_GPT2_SOURCE = pathlib.Path(tempfile.gettempdir()) / "jaxembed-no-gpt2" / "model.safetensors"
CELL_TIMEOUT_S = 600
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# Appended to the executed copy: for each probe, the float64 centred cosine of the notebook's
# trained neighbours next to the best centred cosines found by plain numpy (candidates: tokens
# seen >= 3 times, the candidates' mean subtracted), rank by rank. Values, not ids: ties may
# order differently in float32.
NEIGHBOUR_CHECK = """
import numpy as _np
_cand = _np.flatnonzero(counts_V >= 3)
_x = after_VxD[_cand].astype(_np.float64)
_mean = _x.mean(axis=0)
_unit = lambda v: v / _np.linalg.norm(v, axis=-1, keepdims=True)
_u = _unit(_x - _mean)
for _q, _row in zip(probe_ids, neighbors_after):
    _v = _unit(after_VxD[_q].astype(_np.float64) - _mean)
    _sims = _u @ _v
    _best = sorted((s for c, s in zip(_cand, _sims) if c != _q), reverse=True)[: len(_row)]
    _got = [float(_unit(after_VxD[i].astype(_np.float64) - _mean) @ _v) for i, _ in _row]
    print("NEIGHBOUR-CHECK", len(_row), max(abs(a - b) for a, b in zip(_got, _best)))
"""


def execute(nb) -> float:
    """Runs ``nb`` top to bottom in place in a ``python3`` kernel; returns seconds.

    The kernel starts in ``notebooks/`` and inherits this process's environment.
    Raises ``nbclient.exceptions.CellExecutionError`` at the first failing cell.
    """
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def committed():
    return nbformat.read(IPYNB, as_version=4)


def _cells(nb):
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def _text(outputs) -> str:
    """All text a list of cell outputs shows: streams, text/plain results, errors."""
    parts = []
    for out in outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
    return "".join(parts)


def _code_outputs(nb) -> list[str]:
    return [_text(cell.outputs) for cell in nb.cells if cell.cell_type == "code"]


def test_ipynb_cells_equal_the_paired_jupytext_source(committed):
    # The committed outputs were produced by the committed (reviewable) code.
    paired = jupytext.read(PAIRED_PY)
    got, want = _cells(committed), _cells(paired)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a == b, f"cell {i} differs between {IPYNB.name} and {PAIRED_PY.name}:\n{a}\n---\n{b}"
    assert len(got) == len(want), f"{IPYNB.name} has {len(got)} cells, {PAIRED_PY.name} {len(want)}"
    assert committed.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"


def test_committed_notebook_is_executed_small_and_portable(committed):
    assert IPYNB.stat().st_size < MAX_BYTES, f"{IPYNB.name} is {IPYNB.stat().st_size:,} bytes"
    code = [cell for cell in committed.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), "not executed top to bottom in one run"
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    # A warning on stderr shows in red to a learner; none of it is the lesson.
    assert not [o.text for cell in code for o in cell.outputs if o.get("name") == "stderr"]
    assert (
        sum("image/png" in o.get("data", {}) for cell in code for o in cell.outputs) >= 4
    )  # loss, neighbours, PCA, positions
    # Part 8 says the committed copy was executed offline: its outputs show the note, not GPT-2's pictures.
    shown = "\n".join(_code_outputs(committed))
    assert "GPT-2's position table could not be fetched (this copy ran offline" in shown
    assert "GPT-2's table: not available here" in shown
    for cell in committed.cells:  # no machine-specific paths in the code or what it printed
        shown = cell.source + (_text(cell.outputs) if cell.cell_type == "code" else "")
        assert not re.search(r"(/work/|/home/|/root/|/tmp/|/Users/|[A-Z]:\\)", shown), shown[:200]


def test_notebook_executes_offline(committed, corpus_path, tmp_path, monkeypatch):
    # The kernel inherits this environment: the shared corpus instead of a download.
    monkeypatch.setenv("JAXEMBED_CORPUS", str(corpus_path))
    monkeypatch.setenv("JAXEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", INLINE_BACKEND)
    # Part 8 fetches GPT-2's position table; a source that is not there keeps the test offline.
    monkeypatch.setenv("JAXEMBED_GPT2_URL", str(tmp_path / "no-gpt2" / "model.safetensors"))
    nb = copy.deepcopy(committed)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    # jupyter_client launches the "python3" spec's `python` as sys.executable;
    # an extra cell proves the kernel runs this interpreter's environment.
    nb.cells.append(nbformat.v4.new_code_cell(NEIGHBOUR_CHECK))
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL-PREFIX', sys.prefix)"))

    print(f"notebook executed in {execute(nb):.1f} s")

    outputs = _code_outputs(nb)
    text = "\n".join(outputs)
    assert f"KERNEL-PREFIX {sys.prefix}" in outputs[-1]
    # Part 1: the lookup is the table row; NaN for a bad id; both checked paths raise.
    assert "It is row 2 of the table: True" in text
    assert re.search(r"\[\s*nan\s+nan\s+nan\]", text)
    assert "ValueError: ids[1]=6 is out of range" in text
    assert "JaxRuntimeError: ids must lie in [0, 6)" in text
    # Part 2: the seed's first row of ids, decoded.
    assert "Total parameters: 12,865,792" in text
    assert re.search(r"\[\[\s*464\s+4935\s+20336\s+46566\]", text)
    assert "'The' ' Project' ' Gutenberg' ' eBook'" in text
    # Parts 3 and 4: shapes and the manual sum.
    assert "Input embeddings shape:      (8, 4, 256)" in text
    assert "Equals token + positional computed by hand: True" in text
    # Part 5: the validation loss drops well below the uniform guess.
    match = re.search(r"Validation loss: ([\d.]+) -> ([\d.]+)", text)
    assert match, "the training cell did not report its validation loss"
    first, last = map(float, match.groups())
    assert first == pytest.approx(math.log(50257), abs=0.05)
    assert last < first - 2.0, f"validation loss only fell {first} -> {last}"
    assert "After training (centred cosine):\n' Romeo' ->" in text
    # Part 5's neighbours are the report's rule (centred cosine among tokens seen >= 3 times).
    checks = re.findall(r"NEIGHBOUR-CHECK (\d+) (\S+)", outputs[-2])
    assert len(checks) == 4 and all(int(k) == 5 and float(gap) < 1e-4 for k, gap in checks), checks
    assert re.search(r"' thou'\s+-> [^\n]*' art'", text)  # the pair the notebook's text explains
    assert re.search(r"Random pairs after training: raw cosine \+0\.[3-9]\d ± [\d.]+, centred [-+]0\.0\d", text)
    # Part 6: with one attention layer the positional table learns distance; without, nothing.
    found = {
        name: (float(loc), float(gap))
        for name, loc, gap in re.findall(
            r"(embeddings only|one attention layer): locality ([-+][\d.]+), "
            r"shuffled-positions gap ([-+][\d.]+)",
            text,
        )
    }
    assert found["one attention layer"][0] > 0.2 and found["one attention layer"][1] > 0.05, found
    assert abs(found["embeddings only"][0]) < 0.1 and abs(found["embeddings only"][1]) < 0.02, found
    # Part 6, the loss as text: the same prompt and seed before and after training.
    match = re.search(r"Validation loss with attention: ([\d.]+) -> ([\d.]+)", text)
    assert match, "Part 6 did not report its validation loss"
    samples_out = next(out for out in outputs if "Prompt (the first 4 held-out tokens): " in out)
    prompt = ast.literal_eval(re.search(r"Prompt \(the first 4 held-out tokens\): (.*)\n", samples_out).group(1))
    heading = r"\n--- (?:before|after) training \(validation loss ([\d.]+)\) ---\n"
    _, before_head, before, after_head, after = re.split(heading, samples_out)
    assert (before_head, after_head) == match.groups(), "the samples' losses are not the printed ones"
    before, after = before.removesuffix("\n"), after.removesuffix("\n")
    assert before.startswith(prompt) and after.startswith(prompt) and before != after
    before, after = before[len(prompt) :], after[len(prompt) :]
    # What the text says: after training, a speaker's name in capitals on its own line, and
    # commas; before, mostly words that never occur in the play.
    speaker_line = re.compile(r"^[A-Z]{3,}[A-Z ]*\.$", re.M)
    assert speaker_line.search(after) and "," in after, after
    assert not speaker_line.search(before), before
    play_words = set(re.findall(r"[A-Za-z]+", corpus_path.read_text(encoding="utf-8")))
    unknown = [w for w in re.findall(r"[A-Za-z]+", before) if w not in play_words]
    assert len(unknown) > len(re.findall(r"[A-Za-z]+", before)) / 2, (before, unknown)
    # Part 7: what the text says of each scheme past the trained length.
    rows = {
        name: [None if v == "-" else float(v) for v in values]
        for name, *values in re.findall(
            r"^\s*(learned|sinusoidal|rope|alibi|none)\s+(\S+)\s+(\S+)\s+(\S+)$", text, re.M
        )
    }
    assert set(rows) == {"learned", "sinusoidal", "rope", "alibi", "none"}, rows
    assert rows["learned"][1:] == [None, None]  # no rows past the trained length
    assert rows["learned"][0] == min(r[0] for r in rows.values())  # lowest at 16
    assert rows["alibi"][2] < rows["alibi"][0] + 0.05  # ALiBi stays flat at 4L
    assert rows["sinusoidal"][2] > rows["sinusoidal"][0] + 0.3 and rows["rope"][2] > rows["rope"][0] + 0.3
    assert rows["none"][0] == max(r[0] for r in rows.values()) and rows["none"][2] < rows["none"][0] + 0.05
    assert rows["none"][0] < last  # causal attention alone beats Part 5's embeddings-only model
    assert rows["rope"][1] < rows["rope"][0] + 0.1  # rotary holds at 2L
    # Part 8 offline: the note says what GPT-2's table would show and how to get it, on stdout.
    assert "GPT-2's position table could not be fetched (this copy ran offline" in text
    assert f"place the table by hand at\n  {tmp_path / 'cache' / 'gpt2-124M-wpe.safetensors'}\n" in text
    assert "set\nJAXEMBED_GPT2_URL to a mirror or a local copy" in text
    assert "GPT-2's table: not available here" in text
    mine = re.search(r"Your table \(Part 6, 16 positions\): locality ([-+][\d.]+)", text)
    assert mine and float(mine.group(1)) == found["one attention layer"][0]  # Part 6's number, again
    images = sum("image/png" in o.get("data", {}) for cell in nb.cells for o in cell.get("outputs", []))
    assert images >= 6


def test_part8_with_gpt2s_table_shows_both_maps_and_paths(tmp_path, monkeypatch, capsys):
    # The committed copy runs offline; this runs Part 8's cells on a local stand-in for GPT-2's
    # checkpoint (a helix-shaped wpe), so the branch with the table is exercised too.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import safetensors.numpy

    from jaxembed import nn, report
    from jaxembed.report import analysis

    rng = np.random.default_rng(0)
    t_L = np.arange(1024) / 1023
    helix_Lx3 = np.stack([np.cos(3 * np.pi * t_L), np.sin(3 * np.pi * t_L), 2 * t_L - 1], axis=1)
    basis_Dx3, _ = np.linalg.qr(rng.normal(size=(768, 3)))
    wpe_LxD = (helix_Lx3 @ basis_Dx3.T + 0.01 * rng.normal(size=(1024, 768))).astype(np.float32)
    safetensors.numpy.save_file({"wpe.weight": wpe_LxD}, tmp_path / "model.safetensors")
    monkeypatch.setenv("JAXEMBED_GPT2_URL", str(tmp_path / "model.safetensors"))
    monkeypatch.setenv("JAXEMBED_CACHE", str(tmp_path / "cache"))

    cells = jupytext.read(PAIRED_PY).cells
    start = next(i for i, c in enumerate(cells) if c.source.startswith("## Part 8"))
    end = next(i for i, c in enumerate(cells) if c.source.startswith("## Summary"))
    code = [c.source for c in cells[start:end] if c.cell_type == "code"]
    shown = []  # what the cells display, in order: PNG paths, and "plt.show" for an inline figure

    def show():
        shown.append(f"plt.show: {len(plt.gcf().axes)} axes")
        plt.close("all")

    monkeypatch.setattr(plt, "show", show)
    namespace = dict(
        nn=nn, report=report, analysis=analysis, np=np, plt=plt, pathlib=pathlib, fig_dir=tmp_path,
        attention_pos_LxD=rng.normal(size=(16, 32)).cumsum(axis=0).astype(np.float32),
        Image=lambda filename, width: pathlib.Path(filename), display=shown.append,
    )  # fmt: skip
    for source in code:
        exec(source, namespace)

    out = capsys.readouterr().out
    assert "GPT-2's position table: 1,024 positions x 768 features" in out
    gpt2 = re.search(r"GPT-2's table \(1,024 positions\): locality ([-+][\d.]+)", out)
    assert gpt2 and float(gpt2.group(1)) == round(analysis.position_locality(wpe_LxD), 3)
    # The maps (GPT-2 | yours), then the PCA paths: two panels, each with its colour bar.
    assert shown == [tmp_path / "gpt2_position_maps.png", "plt.show: 4 axes"], shown
    assert shown[0].stat().st_size > 10_000


def main() -> None:
    """Rebuilds the .ipynb from the paired .py and executes it (offline by default)."""
    os.environ.setdefault("JAXEMBED_CORPUS", str(SHARED_CORPUS))
    # Part 8 offline, as committed: a source that is not there, never huggingface.co.
    os.environ.setdefault("JAXEMBED_GPT2_URL", str(NO_GPT2_SOURCE))
    os.environ["MPLBACKEND"] = INLINE_BACKEND  # figures become outputs even if the shell says Agg
    nb = jupytext.read(PAIRED_PY)
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}  # pairing only, as jupytext writes it
    print(f"executing {PAIRED_PY.name} ...", flush=True)
    seconds = execute(nb)
    nbformat.write(nb, IPYNB)
    print(f"wrote {IPYNB} ({IPYNB.stat().st_size:,} bytes) in {seconds:.0f} s")


if __name__ == "__main__":
    main()
