"""jaxembed against the seed notebook's PyTorch pipeline, side by side: the command.

Usage (from the repository root)::

  python -m benchmarks.run                 # every section (about 6-7 min on 2 cores without torch)
  python -m benchmarks.run --quick         # a smoke run at tiny sizes (< 1 min)
  python -m benchmarks.run --no-reference  # jaxembed alone (automatic without torch)
  python -m benchmarks.run --sections memory,mesh
  python -m benchmarks.run --sections corpus   # tokenizing and training from a token file, 50 and 200 MB
  python -m benchmarks.run --sections main     # the README main job: wall time per phase, first run and re-run

Both implementations run in this one process, alternating within every
repetition, after a warm-up; each figure is the median of the repetitions
(``benchmarks.harness.measure``). Every jaxembed train step is
``jaxembed.train.trainer.Trainer``'s compiled step. Peak memory and the mesh run in
fresh child processes. Results go to ``--out`` (default
``benchmarks/results/``, not committed): ``results.json``, ``results.md``
(``benchmarks.report``) and ``sweep.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import sys
import time

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import cases, corpus, harness, memory, mesh, report  # noqa: E402
from benchmarks.harness import GPT2_VOCAB, O200K_VOCAB, Settings  # noqa: E402

SECTIONS = ("data", "embed", "train", "sweep", "memory", "mesh", "corpus", "prototypes", "main")
#: (max_length, stride, batch) of the data-pipeline cases; the first is the seed's.
DATA_CASES = [(4, 4, 8), (256, 128, 8), (256, 1, 64), (1024, 512, 32)]
#: (batch, length, features) of the InputEmbedding forward cases.
EMBED_CASES = [(8, 4, 256), (8, 4, 768), (64, 1024, 256), (64, 1024, 768)]
#: (batch, length, features, attention layers, heads) of the train-step cases, GPT-2 vocabulary: the
#: seed's sizes (embeddings only), the tiny config (the main job's step) and a 256-wide step of 1,024 tokens.
TRAIN_CASES = [(8, 4, 256, 0, 1), (16, 16, 32, 1, 4), (16, 64, 256, 1, 4)]
SWEEP_VOCABS = [GPT2_VOCAB, O200K_VOCAB]
SWEEP_LENGTHS = [4, 16, 64, 256]
#: Smoke sizes: (batch, length, features, vocab) of the train case and the sweep's extra point.
QUICK_TRAIN = (8, 4, 256, 4096)
QUICK_SWEEP = (8, 16, 256, 1024)


# --- Sections -------------------------------------------------------------------


def data_section(settings: Settings, hw: dict, which: tuple[str, ...]) -> list[dict]:
    ids = harness.corpus_ids(5000 if settings.quick else None)
    specs = [(4, 4, 8), (64, 1, 16)] if settings.quick else DATA_CASES
    return [harness.run_case(cases.data_case(ids, *spec, which=which), settings, hw) for spec in specs]


def embed_section(settings: Settings, hw: dict, which: tuple[str, ...]) -> list[dict]:
    specs, vocab = ([(8, 4, 256)], 4096) if settings.quick else (EMBED_CASES, GPT2_VOCAB)
    return [
        harness.run_case(cases.embed_case(b, length, d, which=which, vocab=vocab), settings, hw)
        for b, length, d in specs
    ]


def _ready_step(ready: dict, key: tuple[int, int, int, int]):
    """A step compiled in the background (``--quick``), or a fresh one."""
    future = ready.get(key)
    return future.result() if future else harness.jax_step(*key)


def loss_variants(batch: int, length: int) -> dict[str, dict]:
    """The train section's loss variants beside jaxembed's default (``model.loss_tile_tokens`` None: by bytes).

    ``jaxembed_dense``: the full ``[B, L, V]`` logits (tile 0).
    ``jaxembed_tiled``: a tile of a quarter of the batch's tokens, so the
    loss really runs in 4 tiles (the default tile holds the whole batch at
    the seed's sizes, so it runs the dense program).
    """
    return {
        "jaxembed_dense": {"model.loss_tile_tokens": 0},
        "jaxembed_tiled": {"model.loss_tile_tokens": max(1, batch * length // 4)},
    }


def train_section(settings: Settings, hw: dict, which: tuple[str, ...], ready: dict) -> list[dict]:
    if settings.quick:
        specs = [(*QUICK_TRAIN, 0, 1)]
    else:
        specs = [(b, length, d, GPT2_VOCAB, layers, heads) for b, length, d, layers, heads in TRAIN_CASES]
    rows = []
    for b, length, d, v, layers, heads in specs:
        step = _ready_step(ready, (b, length, d, v)) if "jaxembed" in which and not layers else None
        variants = loss_variants(b, length) if "jaxembed" in which else None
        case = cases.train_case(
            b, length, d, which=which, vocab=v, jax_step=step, variants=variants, num_layers=layers, num_heads=heads
        )
        row = harness.run_case(case, settings, hw)
        if variants:
            row["loss_tile_tokens"] = {
                "jaxembed": harness.resolved_tile_tokens(harness.make_config(b, length, d), v),
                **{name: o["model.loss_tile_tokens"] for name, o in variants.items()},
            }
            add_tile_ratios(row)
        rows.append(row)
    return rows


def add_tile_ratios(row: dict) -> None:
    """Step time of the default and the tiled step over the dense step's, and their first-loss differences."""
    dense = row["jaxembed_dense_s"]
    row["default_over_dense"] = row["jaxembed_s"] / dense
    row["tiled_over_dense"] = row["jaxembed_tiled_s"] / dense
    losses = row["first_loss"]
    row["first_loss_max_abs_diff"] = max(abs(x - losses["jaxembed_dense"]) for x in losses.values())
    print(
        f"train {row['case']}: default (tile {row['loss_tile_tokens']['jaxembed']}) / dense "
        f"{row['default_over_dense']:.3f}, tiled (tile {row['loss_tile_tokens']['jaxembed_tiled']}) / dense "
        f"{row['tiled_over_dense']:.3f}; first losses differ by {row['first_loss_max_abs_diff']:.1e}",
        flush=True,
    )


def sweep_section(settings: Settings, hw: dict, train_rows: list[dict], ready: dict) -> dict:
    """jaxembed's train-step time over vocabulary size and context length, and a fitted cost model."""
    if settings.quick:  # the train section's point plus one: two compilations fewer
        points = [QUICK_SWEEP]
        rows = [{**r, "kind": "sweep"} for r in train_rows]
    else:
        points = [(4, length, 256, vocab) for vocab in SWEEP_VOCABS for length in SWEEP_LENGTHS]
        rows = []
    for b, length, d, v in points:
        case = harness.Case(
            "sweep",
            f"V={v:,} L={length}",
            {"batch": b, "length": length, "features": d, "vocab": v},
            {"jaxembed": _ready_step(ready, (b, length, d, v))},
            b * length,
            {"flops": harness.train_flops(b, length, d, v), "bytes": harness.optimizer_bytes(v, length, d)},
        )
        rows.append(harness.run_case(case, settings, hw))
    rows.sort(key=lambda r: (r["vocab"], r["length"]))
    fit = fit_cost_model(rows)
    print(
        f"sweep fit: t = {fit['fixed_s'] * 1e3:.2f} ms + {fit['s_per_flop'] * 1e12:.2f} ps/FLOP "
        f"+ {fit['s_per_byte'] * 1e12:.2f} ps/optimiser byte; equal at "
        f"{report.fmt(fit['crossover_tokens_per_step'], 0)} tokens per step",
        flush=True,
    )
    return {"batch": rows[0]["batch"], "features": rows[0]["features"], "rows": rows, "fit": fit}


def fit_cost_model(rows: list[dict]) -> dict:
    """Least squares ``t = fixed + a * matmul FLOPs + b * optimiser bytes`` (non-negative).

    The ``b`` term stands for all work proportional to the table (``V x
    D``) and independent of the tokens per step: AdamW's sweep, but also
    writing the dense gradient buffer and clipping it. ``a`` covers the
    three ``[B*L, D] x [D, V]`` matmuls and the softmax (``B*L*V``).
    """
    flops = np.array([r["floor_terms"]["flops"] for r in rows])
    opt_bytes = np.array([r["floor_terms"]["bytes"] for r in rows])
    t = np.array([r["jaxembed_s"] for r in rows])
    # Relative errors: weight each point by 1/t so the small cases count too.
    design = np.stack([np.ones_like(t), flops, opt_bytes], axis=1) / t[:, None]
    coef, *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    coef = np.maximum(coef, 0.0)
    for row in rows:
        parts = {
            "fixed": coef[0],
            "matmul": coef[1] * row["floor_terms"]["flops"],
            "table": coef[2] * row["floor_terms"]["bytes"],
        }
        total = sum(parts.values())
        row["shares"] = {k: v / total for k, v in parts.items()}
        row["dominant"] = max(parts, key=parts.get)
    # Tokens per step at which the two terms are equal: below it the table-sized work dominates.
    per_token = coef[1] * 6  # matmul seconds per token per table entry (6 FLOPs)
    per_entry = coef[2] * 7 * 4  # table-sized seconds per table entry (7 float32 sweeps)
    return {
        "fixed_s": float(coef[0]),
        "s_per_flop": float(coef[1]),
        "s_per_byte": float(coef[2]),
        "effective_GFLOPs": 1e-9 / coef[1] if coef[1] else None,
        "effective_table_GBps": 1e-9 / coef[2] if coef[2] else None,
        "crossover_tokens_per_step": per_entry / per_token if per_token else None,
    }


def plot_sweep(sweep: dict, path: pathlib.Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_time, ax_share = fig.subplots(1, 2)
    vocabs = sorted({r["vocab"] for r in sweep["rows"]})
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for vocab, color in zip(vocabs, colors, strict=False):
        rows = [r for r in sweep["rows"] if r["vocab"] == vocab]
        lengths = [r["length"] for r in rows]
        ax_time.plot(lengths, [r["jaxembed_s"] * 1e3 for r in rows], "o-", color=color, label=f"jaxembed, V={vocab:,}")
        ax_time.plot(
            lengths,
            [r["floor_s"] * 1e3 for r in rows],
            "--",
            color=color,
            alpha=0.6,
            label=f"hardware floor, V={vocab:,}",
        )
        ax_share.plot(
            lengths, [100 * r["shares"]["matmul"] for r in rows], "o-", color=color, label=f"matmuls, V={vocab:,}"
        )
        ax_share.plot(
            lengths,
            [100 * r["shares"]["table"] for r in rows],
            "s:",
            color=color,
            label=f"table-sized (AdamW, gradient), V={vocab:,}",
        )
    for ax in (ax_time, ax_share):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length L (tokens)")
        ax.grid(True, alpha=0.3)
    ax_time.set_yscale("log")
    ax_time.set_ylabel("train step (ms)")
    ax_time.set_title(f"Train step, batch {sweep['batch']}, width {sweep['features']}")
    ax_share.set_ylabel("share of the fitted step time (%)")
    ax_share.set_ylim(0, 100)
    ax_share.set_title("Which term dominates")
    ax_time.legend(fontsize=7)
    ax_share.legend(fontsize=7)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)


# --- Main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repetitions: a smoke run")
    parser.add_argument("--no-reference", action="store_true", help="measure jaxembed alone (no torch)")
    parser.add_argument("--out", default=str(harness.ROOT / "benchmarks" / "results"), help="results folder")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per case (default 5; quick 2)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS)
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # As `jaxembed train` does, before JAX starts: every step below, jaxembed's and PyTorch's alike,
    # reuses its buffers instead of page-faulting fresh ones in (jaxembed.train.allocator).
    from jaxembed.train.allocator import tune_cpu_allocator

    tune_cpu_allocator()
    sections = [s for s in SECTIONS if s in args.sections.split(",")]
    reference = not args.no_reference
    if reference and not harness.torch_available():
        print("torch is not installed (pip install -e '.[bench]'): measuring jaxembed alone.", flush=True)
        reference = False
    for full_size_only in ("prototypes", "main"):  # full-size loaders and steps, the README's own job
        if args.quick and full_size_only in sections:
            sections.remove(full_size_only)
    settings = Settings(
        quick=args.quick,
        reference=reference,
        reps=args.reps or (2 if args.quick else 5),
        warmup=1,
        min_rep_s=0.02 if args.quick else 0.2,
        out=pathlib.Path(args.out),
    )
    settings.out.mkdir(parents=True, exist_ok=True)
    which = ("jaxembed", "reference") if reference else ("jaxembed",)
    started = time.perf_counter()
    results = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)]),
        "sections": sections,
        "settings": {
            "quick": settings.quick,
            "reference": reference,
            "reps": settings.reps,
            "warmup": settings.warmup,
            "min_rep_s": settings.min_rep_s,
        },
        "machine": harness.machine(),
        "versions": harness.versions(),
        "load_start": harness.load(),
    }

    def lap(name: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {name} done", flush=True)

    # A smoke run overlaps its children and compilations with the timings (figures are not its point);
    # a full run keeps children until the timings are over so that they never disturb them.
    background = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    ready, rss, mesh_future, corpus_future = {}, [], None, None
    if settings.quick:
        if "corpus" in sections:  # its own thread: a chain of children, the longest background job
            corpus_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            corpus_future = corpus_pool.submit(corpus.section, settings)
            corpus_pool.shutdown(wait=False)
        if "memory" in sections:
            rss = memory.start_rss(memory.rss_jobs(True, which), background)
        if "mesh" in sections:
            mesh_future = background.submit(mesh.section, settings)
        compile_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        for key in (QUICK_TRAIN, QUICK_SWEEP):
            ready[key] = compile_pool.submit(harness.jax_step, *key)

    results["hardware"] = hw = harness.hardware(settings)
    lap("hardware")
    if reference and not settings.quick:  # tests/test_benchmarks.py checks it separately
        results["equivalence"] = cases.equivalence()
        results["equivalence_attention"] = cases.equivalence(num_layers=1, num_heads=4)
        print(f"reference check: {results['equivalence']}, {results['equivalence_attention']}", flush=True)
        lap("equivalence")
    fused = ("reference_fused", "reference_compiled") if reference and not settings.quick else ()
    if "data" in sections:
        results["data"] = data_section(settings, hw, which)
        lap("data")
    if "embed" in sections:
        results["embed"] = embed_section(settings, hw, which)
        lap("embed")
    if "train" in sections:
        results["train"] = train_section(settings, hw, which + fused, ready)
        lap("train")
    if "sweep" in sections:
        results["sweep"] = sweep_section(settings, hw, results.get("train", []), ready)
        lap("sweep")
    if "prototypes" in sections:
        from benchmarks import prototypes

        results["prototypes"] = prototypes.run(settings, hw)
        lap("prototypes")
    if "main" in sections:  # child processes of its own, after the in-process timings
        from benchmarks import main_job

        results["main"] = main_job.section(hw)
        lap("main job")
    if "memory" in sections:
        results["memory"] = {"xla": memory.xla_section(settings.quick), "plan": memory.plan_figures(settings.quick)}
        if not settings.quick:
            # Peak memory of the eager references only: inductor's compilation would dwarf a step's.
            eager = tuple(name for name in fused if name != "reference_compiled")
            rss = memory.start_rss(memory.rss_jobs(False, which + eager), background)
        results["memory"]["rss"] = memory.collect_rss(rss)
        lap("memory")
    if "mesh" in sections:
        results["mesh"] = mesh_future.result() if mesh_future else mesh.section(settings)
        lap("mesh")
    if "corpus" in sections:
        results["corpus"] = corpus_future.result() if corpus_future else corpus.section(settings)
        lap("corpus")
    background.shutdown()

    probes = [hw]
    if not settings.quick:  # contention from other processes lowers a probe; the floors use the best
        probes.append(harness.hardware(settings))
    results["hardware_probes"] = probes
    results["hardware"] = best = harness.best_hardware(*probes)
    for row in results.get("data", []) + results.get("embed", []) + results.get("train", []):
        harness.refloor(row, best)
    for row in results.get("sweep", {}).get("rows", []):
        harness.refloor(row, best)
    for row in results.get("prototypes", []):
        harness.refloor(row, best, "step_s", "x_floor")
    if "sweep" in sections:
        plot_sweep(results["sweep"], settings.out / "sweep.png")
    results["load_end"] = harness.load()
    results["wall_s"] = time.perf_counter() - started
    (settings.out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    table = report.markdown(results)
    (settings.out / "results.md").write_text(table + "\n")
    print("\n" + table)
    print(
        f"Wrote {settings.out / 'results.json'}, results.md"
        + (", sweep.png" if "sweep" in sections else "")
        + f" ({results['wall_s']:.0f} s)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
