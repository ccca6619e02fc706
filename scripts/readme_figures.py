"""The numbers README.md, benchmarks/README.md and configs/*.py quote about the corpora, computed.

  python scripts/readme_figures.py                  # the cheap figures (seconds): token counts, K, windows
  python scripts/readme_figures.py --check          # ... and exit 1 listing every quote that differs
  python scripts/readme_figures.py --measure        # ... and train the README's runs (minutes, 2 CPU cores)
  python scripts/readme_figures.py --python /root/.pyenv/versions/3.13.0/bin/python   # python-docs there

Cheap figures are exact and the same on every machine, except python-docs: it is built from
the running interpreter's standard-library docstrings, so its figures carry the Python version
and only the running one's (or --python's) are checked. ``--measure`` trains the tiny config
on Romeo and Juliet as the README says (subprocesses of ``jaxembed train``, the runs with and
without ``model.active_vocab`` alternating, so load on a shared machine hits both alike); its
losses are deterministic on CPU and checked with ``--check``, its wall times depend on the load
and are printed with the load average, for benchmarks/README.md. tests/test_readme_figures.py
runs the cheap check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Where the tests and this checkout's sessions keep Project Gutenberg's eBook #1513 (never in the repo).
SHARED_CORPUS = REPO.parent / "shared" / "data" / "romeo_juliet_gutenberg.txt"


@dataclasses.dataclass(frozen=True)
class Quote:
    """A number a file quotes: ``pattern``'s one group must read as ``figures[figure]``."""

    path: str
    pattern: str
    figure: str
    measured: bool = False  # needs --measure to be checked


def _signed(x: float, digits: int) -> str:
    # The README writes negative numbers with a minus sign, not a hyphen.
    return f"{x:+.{digits}f}".replace("-", "\u2212")


def _py(version: str) -> str:
    return version.replace(".", r"\.")


QUOTES: tuple[Quote, ...] = (
    Quote("README.md", r"occur in the corpus \(([\d,]+) for Romeo and Juliet\)", "rj.active_vocab"),
    Quote("configs/default.py", r"to K rows \(([\d,]+) for Romeo and Juliet", "rj.active_vocab"),
    Quote("README.md", r"walk-through reads all ([\d,]+) characters", "rj.chars"),
    Quote("README.md", r"characters \(([\d,]+) GPT-2 tokens\) as the seed", "rj.tokens_raw"),
    Quote("README.md", r"strips them and keeps ([\d,]+) characters", "rj.chars_stripped"),
    Quote("README.md", r"characters, ([\d,]+) tokens, of which", "rj.tokens"),
    Quote("README.md", r"of which ([\d,]+) are held out", "rj.val_tokens"),
    Quote("README.md", r"the tiny config's epoch is ([\d,]+) steps", "rj.tiny_steps_per_epoch"),
    Quote("benchmarks/README.md", r"romeo_juliet_gutenberg\.txt`,\s+([\d,]+) GPT-2 tokens", "rj.tokens_raw"),
    *(
        Quote("README.md", rf"([\d,]+) (?:GPT-2 tokens )?on Python {_py(v)}\b", f"python_docs.tokens.{v}")
        for v in ("3.11", "3.12", "3.13")
    ),
    # The README's two runs on Romeo and Juliet (tiny config, 300 steps): deterministic on CPU.
    Quote("README.md", r"num_layers=0`\): validation loss ([\d.]+) →", "rj.l0.val_loss_initial", True),
    Quote("README.md", r"num_layers=0`\): validation loss [\d.]+ → ([\d.]+)", "rj.l0.val_loss_final", True),
    Quote("README.md", r"position\s+locality ([+\u2212][\d.]+), shuffled", "rj.l0.locality", True),
    Quote("README.md", r"shuffled-positions gap ([+\u2212][\d.]+) nats\.", "rj.l0.shuffled_gap", True),
    Quote("README.md", r"Same run: validation loss ([\d.]+) →", "rj.l1.val_loss_initial", True),
    Quote("README.md", r"Same run: validation loss [\d.]+ → ([\d.]+)", "rj.l1.val_loss_final", True),
    Quote("README.md", r"locality ([+\u2212][\d.]+) \(adjacent", "rj.l1.locality", True),
    Quote("README.md", r"shuffled-positions gap ([+\u2212][\d.]+) nats;", "rj.l1.shuffled_gap", True),
)


def romeo_juliet_figures(path: str | os.PathLike[str]) -> dict[str, str]:
    """Romeo and Juliet as the walk-through and as training read it (the library's own code paths).

    Example:
      >>> figures = romeo_juliet_figures(SHARED_CORPUS)  # doctest: +SKIP
      >>> figures["rj.tokens_raw"], figures["rj.tokens"], figures["rj.active_vocab"]  # doctest: +SKIP
      ('50,317', '45,743', '4,455')
    """
    from jaxembed import config as config_lib
    from jaxembed.data import splits as splits_lib
    from jaxembed.data import windows
    from jaxembed.text import corpus

    raw = corpus.load_text(path)
    config = config_lib.named_config("tiny")
    config.data.text, config.model.active_vocab = os.fspath(path), True
    splits = splits_lib.load_splits(config)  # what `jaxembed train --text PATH` trains on
    d = config.data
    steps = windows.num_windows(len(splits.train_ids), d.max_length, d.stride) // d.batch_size
    return {
        "rj.chars": f"{len(raw):,}",
        "rj.tokens_raw": f"{len(windows.tokenize(raw)):,}",  # the walk-through's (the seed's) count
        "rj.chars_stripped": f"{len(corpus.strip_gutenberg(raw)):,}",
        "rj.tokens": f"{len(splits.train_ids) + len(splits.val_ids):,}",
        "rj.val_tokens": f"{len(splits.val_ids):,}",
        "rj.active_vocab": f"{splits.model_vocab_size:,}",
        "rj.tiny_steps_per_epoch": f"{steps:,}",
    }


def python_docs_figures(text: str | None = None, version: str | None = None) -> dict[str, str]:
    """The ``python-docs`` corpus's size: of ``text`` built by Python ``version``, else of this interpreter's.

    Example:
      >>> python_docs_figures("Return the sum.", "3.99")
      {'python_docs.chars.3.99': '15', 'python_docs.tokens.3.99': '4'}
    """
    from jaxembed.data import windows
    from jaxembed.text import corpus

    if text is None:
        text, version = corpus.load_text("python-docs"), f"{sys.version_info[0]}.{sys.version_info[1]}"
    return {
        f"python_docs.chars.{version}": f"{len(text):,}",
        f"python_docs.tokens.{version}": f"{len(windows.tokenize(text)):,}",
    }


# Runs in another interpreter with only the standard library (and filelock, platformdirs, which are
# pure Python): loads corpus.py by path, so jaxembed.text's numpy-backed modules are never imported.
_OTHER_PYTHON = """
import importlib.util, sys
sys.path[:0] = sys.argv[1:]
spec = importlib.util.spec_from_file_location("_corpus", sys.argv[1] + "/jaxembed/text/corpus.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
text = module.python_docs_text()
sys.stdout.write(f"{sys.version_info[0]}.{sys.version_info[1]}\\n")
sys.stdout.buffer.write(text.encode("utf-8"))
"""


def other_python_docs(python: str) -> dict[str, str]:
    """``python_docs_figures`` of the corpus the interpreter ``python`` builds (tokenized here).

    Example:
      >>> other_python_docs(sys.executable) == python_docs_figures()  # doctest: +SKIP
      True
    """
    import filelock
    import platformdirs

    paths = [str(REPO), *{str(Path(m.__file__).parents[1]) for m in (filelock, platformdirs)}]
    out = subprocess.run([python, "-c", _OTHER_PYTHON, *paths], capture_output=True, check=True).stdout
    version, _, text = out.partition(b"\n")
    return python_docs_figures(text.decode("utf-8"), version.decode())


def _load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _train(workdir: Path, text: Path, *overrides: str) -> dict:
    """One ``jaxembed train`` subprocess: its wall time, steady tokens/s and report.json figures."""
    command = [sys.executable, "-m", "jaxembed.cli", "train", "--workdir", str(workdir), "--text", str(text)]
    start = time.perf_counter()
    subprocess.run([*command, "--no-progress", *overrides], check=True, capture_output=True)
    wall_s = time.perf_counter() - start
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r][1:]  # the first row includes compiling
    report = json.loads((workdir / "report.json").read_text())
    return {"wall_s": wall_s, "tokens_per_sec": statistics.median(speeds), **report}


def measured_figures(text: Path, repeats: int = 3, log: Callable[[str], None] = print) -> dict[str, str]:
    """Trains the README's runs on ``text``: the loss figures, and active_vocab's speed-up (load-dependent)."""
    figures: dict[str, str] = {}
    runs: dict[str, list[dict]] = {"full": [], "active": []}
    with tempfile.TemporaryDirectory(prefix="readme-figures-") as tmp:
        log(f"load average {_load_average()} (1/5/15 min) on {os.cpu_count()} CPUs at the start")
        for i in range(repeats):  # alternating: a load spike on a shared machine hits both alike
            for name, flag in (("full", "False"), ("active", "True")):
                run = _train(Path(tmp, f"{name}{i}"), text, f"--config.model.active_vocab={flag}")
                runs[name].append(run)
                log(
                    f"  {name:6s} vocabulary, run {i}: {run['wall_s']:.1f} s wall, {run['tokens_per_sec']:,.0f} tokens/s"
                )
        l0 = _train(Path(tmp, "l0"), text, "--config.model.num_layers=0")
        log(f"load average {_load_average()} at the end")
    for key, run in (("rj.l0", l0), ("rj.l1", runs["full"][0])):
        figures[f"{key}.val_loss_initial"] = f"{run['val_loss_initial']:.2f}"
        figures[f"{key}.val_loss_final"] = f"{run['val_loss_final']:.2f}"
        figures[f"{key}.locality"] = _signed(run["position_locality"], 3 if key == "rj.l0" else 2)
        gap = run["val_loss_positions_shuffled"] - run["val_loss_final"]
        figures[f"{key}.shuffled_gap"] = _signed(gap, 3 if key == "rj.l0" else 2)
    wall = [f["wall_s"] / a["wall_s"] for f, a in zip(runs["full"], runs["active"], strict=True)]
    speed = [a["tokens_per_sec"] / f["tokens_per_sec"] for f, a in zip(runs["full"], runs["active"], strict=True)]
    figures["rj.active_vocab.wall_speedup"] = (
        f"{statistics.median(wall):.1f}x (pairs: {', '.join(f'{x:.1f}' for x in wall)})"
    )
    figures["rj.active_vocab.step_speedup"] = (
        f"{statistics.median(speed):.1f}x tokens/s (pairs: {', '.join(f'{x:.1f}' for x in speed)})"
    )
    return figures


def check(figures: dict[str, str], read: Callable[[str], str] | None = None) -> tuple[list[str], list[str]]:
    """``(differences, unchecked)``: each quote that reads otherwise than its figure, and those not computed.

    A quote whose pattern no longer matches is a difference too (the sentence changed; so must QUOTES).

    Example:
      >>> check({"rj.active_vocab": "4,455"}, read=lambda path: "occur in the corpus (5,196 for Romeo and Juliet)")[0][0]
      'README.md:1: quotes 5,196 for rj.active_vocab; it is 4,455'
    """
    read = read or (lambda path: (REPO / path).read_text(encoding="utf-8"))
    differences, unchecked = [], []
    for quote in QUOTES:
        if quote.figure not in figures:
            unchecked.append(
                f"{quote.path}: {quote.figure} ({'needs --measure' if quote.measured else 'not computed'})"
            )
            continue
        text = read(quote.path)
        match = re.search(quote.pattern.replace(" ", r"\s+"), text)  # a quote may wrap across lines
        if match is None:
            differences.append(f"{quote.path}: no quote of {quote.figure} matches {quote.pattern!r}")
        elif match.group(1) != figures[quote.figure]:
            line = text.count("\n", 0, match.start(1)) + 1
            differences.append(
                f"{quote.path}:{line}: quotes {match.group(1)} for {quote.figure}; it is {figures[quote.figure]}"
            )
    return differences, unchecked


def main(argv: list[str] | None = None) -> int:
    """Prints the figures as a table; with ``--check``, returns 1 if any quote differs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_text = os.environ.get("JAXEMBED_CORPUS") or (str(SHARED_CORPUS) if SHARED_CORPUS.is_file() else None)
    parser.add_argument("--text", default=default_text, help="Romeo and Juliet, pg1513.txt (default: the shared copy)")
    parser.add_argument("--check", action="store_true", help="compare the files' quotes with the figures")
    parser.add_argument("--measure", action="store_true", help="also train the README's runs (minutes)")
    parser.add_argument("--repeats", type=int, default=3, help="--measure: runs with and without active_vocab")
    parser.add_argument("--python", action="append", default=[], help="also python-docs as this interpreter builds it")
    args = parser.parse_args(argv)
    from jaxembed.text import corpus

    text = Path(args.text) if args.text else corpus.cached_path("romeo-juliet")
    if not args.text:
        corpus.load_text("romeo-juliet")  # downloads it once into the cache
    figures = {**romeo_juliet_figures(text), **python_docs_figures()}
    for python in args.python:
        figures.update(other_python_docs(python))
    if args.measure:
        figures.update(measured_figures(text, args.repeats, log=lambda line: print(line, file=sys.stderr)))
    width = max(map(len, figures))
    print(f"{'figure':<{width}}  value")
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    if not args.check:
        return 0
    differences, unchecked = check(figures)
    for line in unchecked:
        print(f"unchecked: {line}")
    for line in differences:
        print(f"DIFFERS: {line}")
    print(f"{len(QUOTES) - len(unchecked) - len(differences)} quotes agree, {len(differences)} differ.")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
