"""jaxembed against the seed notebook's PyTorch pipeline, side by side.

Usage (from the repository root)::

  python -m benchmarks.run                 # the full benchmark (~10 min on 2 cores)
  python -m benchmarks.run --quick         # a tiny smoke run (< 30 s)
  python -m benchmarks.run --no-reference  # jaxembed alone (no torch needed)

Both implementations run in this one process, alternating within every
repetition (jaxembed first on even repetitions, the reference first on odd
ones), after a warm-up; each figure is the median of the repetitions, timed
with ``time.perf_counter``. Peak memory is measured in a fresh child process
per case and implementation so that peaks never mix. Results go to
``--out`` (default ``benchmarks/results/``): ``results.json``, ``results.md``
and ``sweep.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import cases  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_IMPLS = ("reference", "reference_fused")

#: (max_length, stride, batch) of the data-pipeline cases; the first is the seed's.
DATA_CASES = [(4, 4, 8), (256, 128, 8), (256, 1, 64), (1024, 512, 32)]
#: (batch, length, features) of the InputEmbedding forward cases.
EMBED_CASES = [(8, 4, 256), (8, 4, 768), (64, 1024, 256), (64, 1024, 768)]
#: (batch, length) of the train-step cases, 256 wide, GPT-2 vocabulary.
TRAIN_CASES = [(8, 4), (16, 64)]
SWEEP_VOCABS = [cases.GPT2_VOCAB, cases.O200K_VOCAB]
SWEEP_LENGTHS = [4, 16, 64, 256]

#: Goals, as speedups of jaxembed over the reference on the same machine and run.
GOALS = {"data": 10.0, "train": 5.0, "train_floor": 3.0}


@dataclasses.dataclass
class Settings:
    quick: bool
    reference: bool
    reps: int
    warmup: int
    min_rep_s: float
    out: pathlib.Path
    memory: bool
    sweep: bool
    prototypes: bool


# --- Environment ----------------------------------------------------------------


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def machine() -> dict:
    """CPU model, cores, memory, OS, Python."""
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    mem = None
    try:
        match = re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read())
        mem = round(int(match.group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    return {
        "cpu": model,
        "nproc": os.cpu_count(),
        "threads_used": cases.threads(),
        "memory_GiB": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    out = {}
    for name in ("jax", "jaxlib", "flax", "optax", "grain", "numpy", "torch", "tiktoken"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --- Timing ---------------------------------------------------------------------


def measure(impls: dict[str, Callable[[], object]], settings: Settings) -> dict[str, list[float]]:
    """Seconds per unit for each implementation, alternating within each repetition.

    Each implementation is warmed up first; units faster than
    ``settings.min_rep_s`` are repeated ``inner`` times per repetition (the
    same count for the whole run) and the time divided by ``inner``.
    """
    inner = {}
    for name, fn in impls.items():
        for _ in range(max(settings.warmup, 1)):
            start = time.perf_counter()
            fn()
            once = time.perf_counter() - start  # the last warm-up sizes the repetitions
        inner[name] = max(1, math.ceil(settings.min_rep_s / max(once, 1e-7)))
    times = {name: [] for name in impls}
    names = list(impls)
    for rep in range(settings.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            fn, n = impls[name], inner[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
    return times


def summarize(case: cases.Case, times: dict[str, list[float]]) -> dict:
    """One results row: medians, throughputs, ratios and the floor."""
    row = {
        "kind": case.kind,
        "case": case.name,
        **case.params,
        **case.extra,
        "tokens_per_unit": case.tokens,
        "floor_s": case.floor_s,
        "floor_terms": case.floor_terms,
        "times_s": times,
    }
    for name, ts in times.items():
        median = statistics.median(ts)
        row[f"{name}_s"] = median
        row[f"{name}_tokens_per_s"] = case.tokens / median
    jax_s = row.get("jaxembed_s")
    if jax_s:
        row["jaxembed_x_floor"] = jax_s / case.floor_s if case.floor_s else None
        for name in REFERENCE_IMPLS:
            if f"{name}_s" in row:
                row[f"speedup_vs_{name}"] = row[f"{name}_s"] / jax_s
    return row


def refloor(row: dict, hw: dict, time_key: str = "jaxembed_s", ratio_key: str = "jaxembed_x_floor") -> None:
    """Recomputes a row's floor from its bytes / FLOPs and the probes ``hw``."""
    terms = row.get("floor_terms")
    if not terms or time_key not in row:
        return
    terms["memory_s"] = terms.get("bytes", 0) / hw["bandwidth_Bps"]
    terms["compute_s"] = terms.get("flops", 0) / hw["matmul_flops"]["peak"]
    row["floor_s"] = terms["memory_s"] + terms["compute_s"]
    row[ratio_key] = row[time_key] / row["floor_s"]


def best_hardware(*probes: dict) -> dict:
    """The best bandwidth and matmul throughput any probe of the run saw."""
    return {
        "bandwidth_Bps": max(p["bandwidth_Bps"] for p in probes),
        "matmul_flops": {k: max(p["matmul_flops"][k] for p in probes) for k in ("numpy", "xla", "peak")},
    }


def run_case(case: cases.Case, settings: Settings, hw: dict) -> dict:
    cases.finish_floor(case, hw["bandwidth_Bps"], hw["matmul_flops"]["peak"])
    load_before = load()
    row = summarize(case, measure(case.impls, settings))
    row["load"] = [load_before, load()]
    print_row(row)
    return row


def print_row(row: dict) -> None:
    parts = [f"{row['kind']:>5} {row['case']:<32}"]
    if row["kind"] == "data":
        parts.append(f"jaxembed {row['jaxembed_tokens_per_s'] / 1e6:8.2f} Mtok/s")
        if "reference_s" in row:
            parts.append(f"reference {row['reference_tokens_per_s'] / 1e6:8.3f} Mtok/s")
    else:
        unit, scale = ("us", 1e6) if row["kind"] == "embed" else ("ms", 1e3)
        for name in ("jaxembed", *REFERENCE_IMPLS):
            if f"{name}_s" in row:
                parts.append(f"{name} {row[f'{name}_s'] * scale:9.2f} {unit}")
    for name in REFERENCE_IMPLS:
        if f"speedup_vs_{name}" in row:
            parts.append(f"x{row[f'speedup_vs_{name}']:.2f} vs {name}")
    parts.append(f"floor x{row['jaxembed_x_floor']:.1f}")
    print("  ".join(parts), flush=True)


# --- Sections -------------------------------------------------------------------


def hardware(settings: Settings) -> dict:
    bw = cases.memory_bandwidth(mib=32 if settings.quick else 256, reps=3 if settings.quick else 7)
    mm = cases.matmul_throughput(n=256 if settings.quick else 2048, reps=3 if settings.quick else 7)
    print(
        f"hardware: copy bandwidth {bw / 1e9:.1f} GB/s (read + write); float32 matmul "
        f"{mm['numpy'] / 1e9:.1f} GFLOP/s numpy, {mm['xla'] / 1e9:.1f} GFLOP/s XLA",
        flush=True,
    )
    return {"bandwidth_Bps": bw, "matmul_flops": mm}


def data_section(settings: Settings, hw: dict, which: tuple[str, ...]) -> list[dict]:
    ids = cases.corpus_ids(5000 if settings.quick else None)
    specs = [(4, 4, 8), (64, 1, 16)] if settings.quick else DATA_CASES
    rows = []
    for max_length, stride, batch in specs:
        case = cases.data_case(ids, max_length, stride, batch, which=which)
        rows.append(run_case(case, settings, hw))
    return rows


def embed_section(settings: Settings, hw: dict, which: tuple[str, ...]) -> list[dict]:
    specs, vocab = ([(8, 4, 256)], 4096) if settings.quick else (EMBED_CASES, cases.GPT2_VOCAB)
    return [run_case(cases.embed_case(b, l, d, which=which, vocab=vocab), settings, hw) for b, l, d in specs]


def train_section(settings: Settings, hw: dict, which: tuple[str, ...], ready: dict | None = None) -> list[dict]:
    """``ready`` maps ``(batch, length, features, vocab)`` to futures of compiled jaxembed steps."""
    specs, vocab = ([(8, 4)], 4096) if settings.quick else (TRAIN_CASES, cases.GPT2_VOCAB)
    rows = []
    for b, l in specs:
        future = (ready or {}).get((b, l, 256, vocab))
        case = cases.train_case(b, l, 256, which=which, vocab=vocab, jax_step=future.result() if future else None)
        rows.append(run_case(case, settings, hw))
    return rows


def sweep_section(settings: Settings, hw: dict, train_rows: list[dict] = (), ready: dict | None = None) -> dict:
    """jaxembed's train-step time over vocabulary size and context length."""
    if settings.quick:  # one new point plus the train section's (8 x 4, V=4,096): two compilations fewer
        points, batch, features = [(1024, 16)], 8, 256
        rows = [{**r, "kind": "sweep"} for r in train_rows if (r["batch"], r["features"], r["vocab"]) == (8, 256, 4096)]
    else:
        points, batch, features = [(v, l) for v in SWEEP_VOCABS for l in SWEEP_LENGTHS], 4, 256
        rows = []
    for vocab, length in points:
        future = (ready or {}).get((batch, length, features, vocab))
        if future:
            step = future.result()
        else:
            step = cases.jax_step_fn(batch, length, features, vocab, *cases.train_batch(batch, length, vocab))
        case = cases.Case(
            "sweep",
            f"V={vocab:,} L={length}",
            {"batch": batch, "length": length, "features": features, "vocab": vocab},
            {"jaxembed": step},
            batch * length,
            0.0,
            {
                "flops": cases.train_flops(batch, length, features, vocab),
                "bytes": cases.optimizer_bytes(vocab, length, features),
            },
        )
        rows.append(run_case(case, settings, hw))
    rows.sort(key=lambda r: (r["vocab"], r["length"]))
    fit = fit_cost_model(rows)
    print(
        f"sweep fit: t = {fit['fixed_s'] * 1e3:.2f} ms + {fit['s_per_flop'] * 1e12:.2f} ps/FLOP "
        f"+ {fit['s_per_byte'] * 1e12:.2f} ps/optimiser byte; equal at "
        f"{_fmt(fit['crossover_tokens_per_step'], 0)} tokens per step",
        flush=True,
    )
    return {"batch": batch, "features": features, "rows": rows, "fit": fit}


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
    for vocab, color in zip(vocabs, colors):
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


# --- Peak memory (child processes) ----------------------------------------------------


def _rss_kib() -> dict[str, int]:
    text = open("/proc/self/status").read()
    return {key: int(re.search(key + r":\s+(\d+)", text).group(1)) for key in ("VmRSS", "VmHWM")}


def child_main(spec: dict) -> dict:
    """Runs one case for one implementation and reports its peak memory.

    Method: import the framework, initialise it and load the corpus ids;
    reset the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``)
    and take the resident set as the baseline. Build the case (dataset /
    parameters / optimiser state) and run one warm-up unit (compiling):
    ``resident`` is what it holds afterwards, ``setup_peak`` the high-water
    mark of all that. Reset the
    mark again and run ``units`` units: ``peak`` is the high-water mark while
    running (resident state included), all relative to the baseline.
    """
    impl, kind = spec["impl"], spec["kind"]
    if impl == "jaxembed":
        import jax
        import jax.numpy as jnp  # noqa: F401

        import jaxembed.train  # noqa: F401

        jax.devices()
    else:
        cases._torch()
        from benchmarks import torch_reference  # noqa: F401
    ids = cases.corpus_ids(spec.get("max_tokens"))

    def reset_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    method = "VmHWM reset by /proc/self/clear_refs" if reset_peak() else "ru_maxrss (cannot reset: includes imports)"
    base = _rss_kib()["VmRSS"]
    p = spec["params"]
    if kind == "data":
        case = cases.data_case(ids, p["max_length"], p["stride"], p["batch"], which=(impl,))
    elif kind == "embed":
        case = cases.embed_case(p["batch"], p["length"], p["features"], which=(impl,), vocab=p["vocab"])
    else:
        case = cases.train_case(p["batch"], p["length"], p["features"], which=(impl,), vocab=p["vocab"])
    case.impls[impl]()  # one warm-up unit (compiles) belongs to the setup
    setup = _rss_kib()
    reset_peak()
    for _ in range(spec.get("units", 2)):
        case.impls[impl]()  # results are dropped at once: the peak is the unit's own working set
    run = _rss_kib()
    if method.startswith("ru_maxrss"):
        import resource

        setup["VmHWM"] = run["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mib = lambda kib: kib / 1024  # noqa: E731
    return {
        "resident_MiB": mib(setup["VmRSS"] - base),
        "setup_peak_MiB": mib(setup["VmHWM"] - base),
        "peak_MiB": mib(run["VmHWM"] - base),
        "baseline_MiB": mib(base),
        "method": method,
    }


def memory_jobs(rows: list[dict], which: tuple[str, ...], quick: bool) -> list[dict]:
    """One child-process spec per (case, implementation) that was timed."""
    jobs = []
    for row in rows:
        params = {k: row[k] for k in ("max_length", "stride", "batch", "length", "features", "vocab") if k in row}
        for impl in which:
            if f"{impl}_s" in row:
                jobs.append(
                    {
                        "kind": row["kind"],
                        "case": row["case"],
                        "impl": impl,
                        "params": params,
                        "max_tokens": 5000 if quick else None,
                    }
                )
    return jobs


def _memory_child(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {**spec, "error": (proc.stderr or proc.stdout)[-2000:]}
    return {**spec, **json.loads(lines[-1])}


def memory_section(jobs: list[dict], pool: concurrent.futures.Executor | None = None) -> list:
    """Peak memory of every job, each in its own process (two at a time: peaks are per process).

    With ``pool`` the children start now and the returned futures are
    collected later (``collect_memory``); otherwise this waits for them.
    """
    if pool is not None:
        return [pool.submit(_memory_child, spec) for spec in jobs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as own:
        return collect_memory([own.submit(_memory_child, spec) for spec in jobs])


def collect_memory(futures: list) -> list[dict]:
    results = [f.result() for f in futures]
    for r in results:
        if "error" in r:
            print(f"memory {r['kind']} {r['case']} {r['impl']}: FAILED\n{r['error']}", flush=True)
        else:
            print(
                f"memory {r['kind']:>5} {r['case']:<32} {r['impl']:<16} resident {r['resident_MiB']:8.1f} MiB, "
                f"peak while running {r['peak_MiB']:8.1f} MiB, setup peak {r['setup_peak_MiB']:8.1f} MiB",
                flush=True,
            )
    return results


# --- Report ---------------------------------------------------------------------------


def _fmt(x, digits=2):
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "–"
    return f"{x:,.{digits}f}"


def _goal(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "not met")


def markdown(results: dict) -> str:
    hw = results["hardware"]
    m, v = results["machine"], results["versions"]
    lines = [
        f"Run {results['started']} · `{results['command']}` · {results['settings']['reps']} repetitions "
        f"(medians), warm-up {results['settings']['warmup']}",
        "",
        f"Machine: {m['cpu']}, nproc {m['nproc']} (XLA and torch both use {m['threads_used']} threads), "
        f"{m['memory_GiB']} GiB; Python {m['python']}; "
        + ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "flax", "optax", "grain", "numpy", "torch")),
        f"Load average at start / end: {results['load_start']} / {results['load_end']}",
        "",
        f"Hardware probes (same run, best of {len(results.get('hardware_probes', [hw]))} probes of 7 tries each, "
        f"at the start and the end): copy bandwidth **{hw['bandwidth_Bps'] / 1e9:.1f} GB/s** (bytes read + "
        f"written by a {'32' if results['settings']['quick'] else '256'} MiB numpy copy); float32 "
        f"{'256' if results['settings']['quick'] else '2048'}² matmul "
        f"**{hw['matmul_flops']['numpy'] / 1e9:.1f} GFLOP/s** numpy, **{hw['matmul_flops']['xla'] / 1e9:.1f} "
        f"GFLOP/s** XLA (floors use the faster). Per probe: "
        + "; ".join(
            f"{p['bandwidth_Bps'] / 1e9:.1f} GB/s, {p['matmul_flops']['peak'] / 1e9:.0f} GFLOP/s"
            for p in results.get("hardware_probes", [hw])
        )
        + ".",
        "",
    ]
    if "equivalence" in results:
        e = results["equivalence"]
        lines += [
            f"Reference check: from the same parameters, after {e['steps']} AdamW steps the losses differ by "
            f"{e['loss_max_abs_diff']:.1e} and the token tables by {e['token_table_max_abs_diff']:.1e} "
            f"(they moved {e['table_moved']:.1e}); input embeddings differ by "
            f"{e['input_embedding_max_abs_diff']:.1e}.",
            "",
        ]
    has_ref = any("reference_s" in r for r in results.get("data", []) + results.get("train", []))
    if results.get("data"):
        lines += [
            "### Data pipeline: one shuffled epoch over the corpus",
            "",
            "| (max_length, stride, batch) | batches | jaxembed tok/s | reference tok/s | speedup (goal ≥ 10x) "
            "| build: jaxembed / reference | floor tok/s | jaxembed time / floor |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in results["data"]:
            speed = r.get("speedup_vs_reference")
            lines.append(
                f"| ({r['max_length']}, {r['stride']}, {r['batch']}) | {r['batches']:,} | "
                f"{_fmt(r['jaxembed_tokens_per_s'] / 1e6)} M | "
                f"{_fmt(r.get('reference_tokens_per_s', math.nan) / 1e6, 3)} M | "
                f"{_fmt(speed, 1)}x {_goal(speed and speed >= GOALS['data']) if speed else ''} | "
                f"{_fmt(r.get('jaxembed_build_s', math.nan) * 1e3, 2)} ms / {_fmt(r.get('reference_build_s', math.nan) * 1e3, 1)} ms | "
                f"{_fmt(r['tokens_per_unit'] / r['floor_s'] / 1e6, 0)} M | "
                f"{_fmt(r['jaxembed_x_floor'], 0)}x |"
            )
        lines.append("")
    if results.get("embed"):
        lines += [
            "### InputEmbedding forward (GPT-2 vocabulary)",
            "",
            "| ids, width | jaxembed | reference | speedup | floor | jaxembed time / floor |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in results["embed"]:
            lines.append(
                f"| {r['case']} | {_fmt(r['jaxembed_s'] * 1e6, 1)} µs | {_fmt(r.get('reference_s', math.nan) * 1e6, 1)} µs | "
                f"{_fmt(r.get('speedup_vs_reference'))}x | {_fmt(r['floor_s'] * 1e6, 1)} µs | {_fmt(r['jaxembed_x_floor'], 1)}x |"
            )
        lines.append("")
    if results.get("train"):
        lines += [
            "### Train step (tied model, AdamW + global-norm clipping)",
            "",
            "| case | jaxembed | reference (AdamW default) | reference (AdamW fused) "
            "| speedup vs default (goal ≥ 5x) | vs fused | floor (matmul + optimiser) | jaxembed / floor (goal ≤ 3x) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in results["train"]:
            t = r["floor_terms"]
            speed = r.get("speedup_vs_reference")
            lines.append(
                f"| {r['case']} | {_fmt(r['jaxembed_s'] * 1e3, 1)} ms | "
                f"{_fmt(r.get('reference_s', math.nan) * 1e3, 1)} ms | {_fmt(r.get('reference_fused_s', math.nan) * 1e3, 1)} ms | "
                f"{_fmt(speed)}x {_goal(speed >= GOALS['train']) if speed else ''} | "
                f"{_fmt(r.get('speedup_vs_reference_fused'))}x | "
                f"{_fmt(r['floor_s'] * 1e3, 1)} ms ({_fmt(t['compute_s'] * 1e3, 1)} + {_fmt(t['memory_s'] * 1e3, 1)}) | "
                f"{_fmt(r['jaxembed_x_floor'])}x {_goal(r['jaxembed_x_floor'] <= GOALS['train_floor'])} |"
            )
        lines.append("")
    if results.get("memory"):
        lines += [
            "### Memory (each case and implementation in a fresh process; MiB above the idle process "
            "with its framework imported)",
            "",
            "Resident: what the built case holds (dataset, tables, optimiser state). Peak: the high-water "
            "mark while running 2 units (resident included). Setup peak: building it and one warm-up unit "
            "(initialisers, compiling). Method: `/proc/self/clear_refs` resets VmHWM; "
            "jax's `memory_stats()` is None on CPU.",
            "",
            "| case | jaxembed resident / peak / setup peak | reference resident / peak / setup peak "
            "| reference (fused AdamW) |",
            "| --- | ---: | ---: | ---: |",
        ]
        by_case = {}
        for r in results["memory"]:
            by_case.setdefault((r["kind"], r["case"]), {})[r["impl"]] = r

        def cell(r):
            if not r or "error" in r:
                return "–"
            return f"{r['resident_MiB']:,.1f} / {r['peak_MiB']:,.1f} / {r['setup_peak_MiB']:,.1f}"

        for (kind, case), impls in by_case.items():
            lines.append(
                f"| {kind}: {case} | {cell(impls.get('jaxembed'))} | {cell(impls.get('reference'))} | "
                f"{cell(impls.get('reference_fused'))} |"
            )
        lines.append("")
    if results.get("sweep"):
        s = results["sweep"]
        f = s["fit"]
        lines += [
            f"### How cost grows: jaxembed train step, batch {s['batch']}, width {s['features']}",
            "",
            f"Fit over these points: t = {f['fixed_s'] * 1e3:.2f} ms + matmul FLOPs / "
            f"{_fmt(f['effective_GFLOPs'], 1)} GFLOP/s + AdamW bytes / {_fmt(f['effective_table_GBps'], 1)} "
            f"GB/s. The second term stands for all work proportional to the table (V x D) whatever the "
            f"tokens per step: AdamW's sweep, the dense gradient buffer, clipping. The two terms are equal "
            f"at **{_fmt(f['crossover_tokens_per_step'], 0)} tokens per step**: below it the table-sized "
            f"work dominates, above it the matmuls. Plot: `sweep.png`.",
            "",
            "| vocabulary | context | step | floor | step / floor | matmul share | table-sized share | dominant |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in s["rows"]:
            lines.append(
                f"| {r['vocab']:,} | {r['length']} | {_fmt(r['jaxembed_s'] * 1e3, 1)} ms | "
                f"{_fmt(r['floor_s'] * 1e3, 1)} ms | {_fmt(r['jaxembed_x_floor'])}x | "
                f"{100 * r['shares']['matmul']:.0f}% | {100 * r['shares']['table']:.0f}% | {r['dominant']} |"
            )
        lines.append("")
    if results.get("prototypes"):
        lines += [
            "### Prototypes (benchmarks/prototypes.py; same process, alternating with jaxembed as it is)",
            "",
            "| variant | case | jaxembed today | prototype | speedup vs today | speedup vs reference | same result? |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in results["prototypes"]:
            proto = r["proto"] + (f" ({r['x_floor']:.1f}x its floor)" if r.get("x_floor") else "")
            lines.append(
                f"| {r['variant']} | {r['case']} | {r['today']} | {proto} | "
                f"{_fmt(r.get('speedup_vs_jaxembed'))}x | {_fmt(r.get('speedup_vs_reference'))}x | {r['exact']} |"
            )
        lines.append("")
    if not has_ref:
        lines += ["The reference was not run (torch is not installed, or `--no-reference`).", ""]
    return "\n".join(lines)


# --- Main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repetitions: a smoke run (< 30 s)")
    parser.add_argument("--no-reference", action="store_true", help="measure jaxembed alone (no torch)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per case (default 5; quick 2)")
    parser.add_argument(
        "--sections",
        default="data,embed,train,memory,sweep,prototypes",
        help="comma-separated subset of data,embed,train,memory,sweep,prototypes",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_main(json.loads(args.child))), flush=True)
        return 0
    sections = set(args.sections.split(","))
    unknown = sections - {"data", "embed", "train", "memory", "sweep", "prototypes"}
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}")
    reference = not args.no_reference
    if reference and not torch_available():
        print(
            "torch is not installed (pip install -e '.[bench]'): measuring jaxembed alone, "
            "without the reference columns.",
            flush=True,
        )
        reference = False
    settings = Settings(
        quick=args.quick,
        reference=reference,
        reps=args.reps or (2 if args.quick else 5),
        warmup=1,
        min_rep_s=0.02 if args.quick else 0.2,
        out=pathlib.Path(args.out),
        memory="memory" in sections,
        sweep="sweep" in sections,
        prototypes="prototypes" in sections and not args.quick,
    )
    settings.out.mkdir(parents=True, exist_ok=True)
    which = ("jaxembed", "reference") if reference else ("jaxembed",)
    started = time.perf_counter()
    results = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "quick": settings.quick,
            "reference": reference,
            "reps": settings.reps,
            "warmup": settings.warmup,
            "min_rep_s": settings.min_rep_s,
        },
        "machine": machine(),
        "versions": versions(),
        "load_start": load(),
    }
    quick_memory = None
    if settings.memory and settings.quick:
        # A smoke run overlaps its one memory child with the timings (they are not the point there).
        spec = {
            "kind": "train",
            "case": "B=8 L=4 D=256 V=4,096",
            "impl": "jaxembed",
            "max_tokens": 5000,
            "params": {"batch": 8, "length": 4, "features": 256, "vocab": 4096},
        }
        quick_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        quick_memory = memory_section([spec], quick_pool)

    ready = {}
    if settings.quick:
        # Compilation dominates a smoke run: build and compile its two train steps in the
        # background while the main thread imports, tokenizes and times the other cases.
        compile_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        for key in ((8, 4, 256, 4096), (8, 16, 256, 1024)):
            ready[key] = compile_pool.submit(cases.warm_step, *key)

    def lap(name):
        print(f"[{time.perf_counter() - started:6.1f} s] {name} done", flush=True)

    results["hardware"] = hw = hardware(settings)
    lap("hardware")
    if reference and not settings.quick:  # tests/test_benchmarks.py checks it separately
        results["equivalence"] = cases.equivalence()
        lap("equivalence")
        print(f"reference check: {results['equivalence']}", flush=True)
    if "data" in sections:
        results["data"] = data_section(settings, hw, which)
        lap("data")
    if "embed" in sections:
        results["embed"] = embed_section(settings, hw, which)
        lap("embed")
    fused = ("reference_fused",) if reference and not settings.quick else ()
    if "train" in sections:
        results["train"] = train_section(settings, hw, which + fused, ready)
        lap("train")
    if settings.sweep:
        results["sweep"] = sweep_section(settings, hw, results.get("train", []), ready)
        lap("sweep")
    if settings.prototypes:
        from benchmarks import prototypes

        results["prototypes"] = prototypes.run(settings, hw, results.get("train", []))
        lap("prototypes")
    if settings.memory and not settings.quick:  # after the timings, so that children never disturb them
        rows = results.get("data", []) + results.get("embed", []) + results.get("train", [])
        results["memory"] = memory_section(memory_jobs(rows, which + fused, quick=False))
        lap("memory")
    elif settings.memory:
        results["memory"] = collect_memory(quick_memory)
        lap("memory")
    probes = [hw]
    if not settings.quick:  # contention from other processes lowers a probe; the floors use the best
        probes.append(hardware(settings))
    results["hardware_probes"] = probes
    results["hardware"] = best = best_hardware(*probes)
    for kind in ("data", "embed", "train"):
        for row in results.get(kind, []):
            refloor(row, best)
    for row in results.get("sweep", {}).get("rows", []):
        refloor(row, best)
    for row in results.get("prototypes", []):
        refloor(row, best, "step_s", "x_floor")
    if settings.sweep:
        plot_sweep(results["sweep"], settings.out / "sweep.png")
    results["load_end"] = load()
    results["wall_s"] = time.perf_counter() - started
    (settings.out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    table = markdown(results)
    (settings.out / "results.md").write_text(table + "\n")
    print("\n" + table)
    print(
        f"Wrote {settings.out / 'results.json'}, results.md"
        + (", sweep.png" if settings.sweep else "")
        + f" ({results['wall_s']:.0f} s)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
