"""What every benchmark shares: settings, timing, summaries, probes, and jaxembed's step.

The bottom of the benchmarks' import graph: ``cases``, ``memory``, ``mesh``,
``prototypes`` and ``run`` import this module, and it imports none of them.

* ``Settings``, ``measure`` (alternating repetitions), ``summarise`` (medians,
  throughputs, ratios, floors), ``Case`` (one unit of work per implementation).
* Hardware probes (``memory_bandwidth``, ``matmul_throughput``, ``hardware``)
  and the floors built from them (``finish_floor``, ``refloor``).
* jaxembed's train step as ``jaxembed train`` builds it: ``make_config`` (from
  ``jaxembed.config.base_config()``), ``make_trainer`` (``trainer.Trainer``:
  jitted, compiled ahead of time, sharded, state donated) and
  ``step_callable``.
* ``run_child``: a benchmark module's ``child_main`` in a fresh process (for
  peak memory, or settings that must precede JAX's start).
"""

from __future__ import annotations

import dataclasses
import functools
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
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The seed's corpus: Project Gutenberg eBook #1513 (kept outside the repository).
CORPUS = ROOT.parent / "shared" / "data" / "romeo_juliet_gutenberg.txt"
GPT2_VOCAB = 50257
O200K_VOCAB = 200019  # tiktoken's o200k_base n_vocab
REFERENCE_IMPLS = ("reference", "reference_fused", "reference_compiled")


@dataclasses.dataclass
class Settings:
    """How a run measures: repetitions, warm-up, the shortest repetition, sizes."""

    quick: bool = False
    reference: bool = False
    reps: int = 5
    warmup: int = 1
    min_rep_s: float = 0.2
    out: pathlib.Path | None = None


@dataclasses.dataclass
class Case:
    """One benchmark case: a unit of work per implementation and what it is worth."""

    kind: str  # "data", "embed", "train", "sweep"
    name: str  # e.g. "L=4 S=4 B=8"
    params: dict
    impls: dict[str, Callable[[], object]]  # implementation -> one unit of work
    tokens: int  # tokens per unit (throughputs)
    floor_terms: dict  # {"bytes": ..., "flops": ...}: what the hardware must at least do per unit
    extra: dict = dataclasses.field(default_factory=dict)
    floor_s: float = 0.0  # filled by finish_floor from the probes


# --- Environment ----------------------------------------------------------------


def threads() -> int:
    """CPU cores this process may run on: XLA's CPU client sizes its pool to this."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def machine() -> dict:
    """CPU model, cores, memory, OS, Python."""
    model = platform.processor() or "unknown"
    try:
        match = re.search(r"model name\s*:\s*(.+)", pathlib.Path("/proc/cpuinfo").read_text())
        model = match.group(1).strip() if match else model
    except OSError:
        pass
    mem = None
    try:
        match = re.search(r"MemTotal:\s+(\d+)", pathlib.Path("/proc/meminfo").read_text())
        mem = round(int(match.group(1)) / 2**20, 1) if match else None
    except OSError:
        pass
    return {
        "cpu": model,
        "nproc": os.cpu_count(),
        "threads_used": threads(),
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


def measure(
    impls: dict[str, Callable[[], object]], settings: Settings, cpu: dict[str, list[tuple[float, float]]] | None = None
) -> dict[str, list[float]]:
    """Seconds per unit for each implementation, alternating within each repetition.

    Each implementation is warmed up first; units faster than
    ``settings.min_rep_s`` are repeated ``inner`` times per repetition (the
    same count for the whole run) and the time divided by ``inner``.
    Repetition ``r`` runs the implementations in order when ``r`` is even
    and in reverse when odd, so drifting load falls on all of them alike.
    With ``cpu``, also fills ``cpu[name]`` with the process's ``(user, sys)``
    CPU seconds per unit of each repetition (every thread: XLA's and torch's
    pools included), from ``os.times()``.
    """
    inner = {}
    for name, fn in impls.items():
        once = 0.0
        for _ in range(max(settings.warmup, 1)):
            start = time.perf_counter()
            fn()
            once = time.perf_counter() - start  # the last warm-up sizes the repetitions
        inner[name] = max(1, math.ceil(settings.min_rep_s / max(once, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for rep in range(settings.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            fn, n = impls[name], inner[name]
            before = os.times()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
            after = os.times()
            if cpu is not None:
                cpu.setdefault(name, []).append(((after.user - before.user) / n, (after.system - before.system) / n))
    return times


def summarise(case: Case, times: dict[str, list[float]]) -> dict:
    """One results row: per implementation the median seconds and tokens/s; ratios; the floor."""
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
    for name in jax_impls(row):  # jaxembed and its variants (e.g. jaxembed_dense): each against the floor
        row[f"{name}_x_floor"] = row[f"{name}_s"] / case.floor_s if case.floor_s else None
    jax_s = row.get("jaxembed_s")
    if jax_s:
        for name in REFERENCE_IMPLS:
            if f"{name}_s" in row:
                row[f"speedup_vs_{name}"] = row[f"{name}_s"] / jax_s
        measured = [name for name in REFERENCE_IMPLS if f"{name}_s" in row]
        if measured:  # against the fastest PyTorch of this row: what a PyTorch user after speed would run
            row["fastest_reference"] = min(measured, key=lambda name: row[f"{name}_s"])
            row["speedup_vs_fastest_reference"] = row[f"{row['fastest_reference']}_s"] / jax_s
    return row


def jax_impls(row: dict) -> list[str]:
    """The implementations of a row that are jaxembed: ``jaxembed`` and its variants ``jaxembed_*``."""
    return [name for name in row.get("times_s", {}) if name == "jaxembed" or name.startswith("jaxembed_")]


def run_case(case: Case, settings: Settings, hw: dict) -> dict:
    """Floors ``case`` with the probes ``hw``, measures it, prints and returns its row."""
    finish_floor(case, hw["bandwidth_Bps"], hw["matmul_flops"]["peak"])
    load_before = load()
    cpu: dict[str, list[tuple[float, float]]] = {}
    row = summarise(case, measure(case.impls, settings, cpu))
    for name, per_rep in cpu.items():  # medians over repetitions: user and kernel CPU seconds per unit
        row[f"{name}_user_s"] = statistics.median(u for u, _ in per_rep)
        row[f"{name}_sys_s"] = statistics.median(k for _, k in per_rep)
    row["load"] = [load_before, load()]
    print_row(row)
    return row


def print_row(row: dict) -> None:
    parts = [f"{row['kind']:>5} {row['case']:<32}"]
    if row["kind"] == "data":
        for name in ("jaxembed", "reference"):
            if f"{name}_s" in row:
                parts.append(f"{name} {row[f'{name}_tokens_per_s'] / 1e6:8.2f} Mtok/s")
    else:
        unit, scale = ("us", 1e6) if row["kind"] == "embed" else ("ms", 1e3)
        for name in (*jax_impls(row), *REFERENCE_IMPLS):
            if f"{name}_s" in row:
                parts.append(f"{name} {row[f'{name}_s'] * scale:9.2f} {unit}")
    for name in REFERENCE_IMPLS:
        if f"speedup_vs_{name}" in row:
            parts.append(f"x{row[f'speedup_vs_{name}']:.2f} vs {name}")
    if row.get("jaxembed_x_floor"):
        parts.append(f"floor x{row['jaxembed_x_floor']:.1f}")
    print("  ".join(parts), flush=True)


# --- Hardware probes and floors ---------------------------------------------------


def _best_time(fn: Callable[[], object], reps: int) -> float:
    """The fastest of ``reps`` timed calls (after one warm-up): what the hardware can do."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def memory_bandwidth(mib: int = 256, reps: int = 7) -> float:
    """Bytes per second of a ``mib`` MiB numpy copy (best of ``reps``), bytes read plus written."""
    src = np.ones(mib << 18, np.float32)
    dst = np.empty_like(src)
    seconds = _best_time(lambda: np.copyto(dst, src), reps)
    return 2 * src.nbytes / seconds


def matmul_throughput(n: int = 2048, reps: int = 5) -> dict[str, float]:
    """FLOP/s of an ``n x n`` float32 matmul (best of ``reps``): numpy (BLAS), jitted XLA, the faster."""
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3
    numpy_rate = flops / _best_time(lambda: a @ a, reps)
    a_dev = jnp.asarray(a)
    mm = jax.jit(lambda x: x @ x)
    xla_rate = flops / _best_time(lambda: mm(a_dev).block_until_ready(), reps)
    return {"numpy": numpy_rate, "xla": xla_rate, "peak": max(numpy_rate, xla_rate)}


def hardware(settings: Settings) -> dict:
    """Both probes at the run's size (smaller for ``--quick``), printed."""
    mib, n, reps = (32, 256, 3) if settings.quick else (256, 2048, 7)
    bw = memory_bandwidth(mib=mib, reps=reps)
    mm = matmul_throughput(n=n, reps=reps)
    print(
        f"hardware: copy bandwidth {bw / 1e9:.1f} GB/s (read + write); float32 {n}² matmul "
        f"{mm['numpy'] / 1e9:.1f} GFLOP/s numpy, {mm['xla'] / 1e9:.1f} GFLOP/s XLA",
        flush=True,
    )
    return {"bandwidth_Bps": bw, "matmul_flops": mm, "copy_MiB": mib, "matmul_n": n, "tries": reps}


def best_hardware(*probes: dict) -> dict:
    """The best bandwidth and matmul throughput any probe of the run saw (contention only slows a probe)."""
    return {
        "bandwidth_Bps": max(p["bandwidth_Bps"] for p in probes),
        "matmul_flops": {k: max(p["matmul_flops"][k] for p in probes) for k in ("numpy", "xla", "peak")},
    }


def finish_floor(case: Case, bandwidth: float, flops_rate: float) -> Case:
    """Fills ``case.floor_s`` from its bytes and FLOPs and the measured bandwidth and throughput."""
    terms = case.floor_terms
    terms["memory_s"] = terms.get("bytes", 0) / bandwidth
    terms["compute_s"] = terms.get("flops", 0) / flops_rate
    # The matmuls and the optimiser's sweep are separate phases of a step, so
    # their floors add (a perfect overlap would at most halve the sum).
    case.floor_s = terms["memory_s"] + terms["compute_s"]
    return case


def refloor(row: dict, hw: dict, time_key: str | None = None, ratio_key: str | None = None) -> None:
    """Recomputes a row's floor from its bytes / FLOPs and the run's best probes ``hw``.

    The ratio to the floor is updated for ``time_key`` -> ``ratio_key``, or
    by default for every jaxembed implementation of the row
    (``jaxembed_s`` -> ``jaxembed_x_floor``, ``jaxembed_dense_s`` -> ...).
    """
    terms = row.get("floor_terms")
    keys = [(time_key, ratio_key)] if time_key else [(f"{n}_s", f"{n}_x_floor") for n in jax_impls(row)]
    keys = [(t, r) for t, r in keys if t in row]
    if not terms or not keys:
        return
    terms["memory_s"] = terms.get("bytes", 0) / hw["bandwidth_Bps"]
    terms["compute_s"] = terms.get("flops", 0) / hw["matmul_flops"]["peak"]
    row["floor_s"] = terms["memory_s"] + terms["compute_s"]
    for t, r in keys:
        row[r] = row[t] / row["floor_s"]


def train_flops(batch: int, length: int, features: int, vocab: int) -> float:
    """Matmul FLOPs of one step of the tied model: logits, d(h), d(table)."""
    return 3 * 2 * batch * length * features * vocab


def optimizer_bytes(vocab: int, length: int, features: int, itemsize: int = 4) -> float:
    """AdamW's traffic: read param, grad, mu, nu and write param, mu, nu."""
    return 7 * (vocab + length) * features * itemsize


# --- Inputs ---------------------------------------------------------------------


@functools.cache
def corpus_ids(max_tokens: int | None = None) -> np.ndarray:
    """The seed's corpus tokenized once with GPT-2 (int32), optionally cut to ``max_tokens``."""
    from jaxembed import data

    ids = data.tokenize(CORPUS.read_text(encoding="utf-8"))
    return ids if max_tokens is None else ids[:max_tokens]


def train_batch(batch: int, length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed ``(inputs_BxL, targets_BxL)``: corpus windows for GPT-2's vocabulary, else random ids."""
    if vocab == GPT2_VOCAB:
        ids = corpus_ids()
    else:
        ids = np.random.default_rng(1).integers(0, vocab, batch * (length + 1) + 1).astype(np.int32)
    starts = np.arange(batch) * length
    spans = np.stack([ids[s : s + length + 1] for s in starts])
    return np.ascontiguousarray(spans[:, :-1]), np.ascontiguousarray(spans[:, 1:])


# --- jaxembed's train step, as `jaxembed train` builds it --------------------------------


def make_config(batch: int, length: int, features: int, overrides: dict[str, Any] | None = None):
    """``jaxembed.config.base_config()`` at these sizes, with ``{"section.field": value}`` overrides.

    Raises:
      KeyError: an override names a field the config does not have.
    """
    from jaxembed.config import base_config

    config = base_config()
    config.data.batch_size, config.data.max_length, config.data.stride = batch, length, length
    config.model.features = features
    # The seed's model (and the PyTorch reference) has no attention: compare like with like.
    config.model.num_layers = 0
    return apply_overrides(config, overrides)


def resolved_tile_tokens(config, vocab: int = GPT2_VOCAB) -> int:
    """The loss tile a CPU run of ``config`` uses (``model.loss_tile_tokens``; None: ``auto_tile_tokens``)."""
    from jaxembed.nn.embeddings import padded_size
    from jaxembed.nn.losses import auto_tile_tokens

    tile = config.model.loss_tile_tokens
    padded = padded_size(vocab, config.model.vocab_multiple)
    return auto_tile_tokens(padded, "cpu", features=config.model.features) if tile is None else tile


def apply_overrides(config, overrides: dict[str, Any] | None):
    """Sets ``{"section.field": value}`` on ``config`` (a copy is not made); returns it."""
    for key, value in (overrides or {}).items():
        section, field = key.split(".")
        if field not in config[section]:
            raise KeyError(f"config override {key}={value!r}: the config has no field {key}.")
        config[section][field] = value
    return config


def has_fields(overrides: dict[str, Any]) -> bool:
    """Whether ``base_config()`` has every ``section.field`` that ``overrides`` names."""
    from jaxembed.config import base_config

    config = base_config()
    return all(key.split(".")[1] in config[key.split(".")[0]] for key in overrides)


def make_trainer(config, vocab: int, mesh=None, tx=None):
    """``jaxembed.train.trainer.Trainer`` for ``config``: the compiled step ``jaxembed train`` runs.

    ``tx`` swaps the optimiser (a prototype) and keeps everything else.
    """
    from jaxembed.train.trainer import Trainer

    if tx is None:
        return Trainer.from_config(config, vocab, mesh=mesh)
    from jaxembed.nn.model import make_model
    from jaxembed.train.trainer import DEFAULT_AXIS_RULES, make_mesh

    mesh = make_mesh(config.mesh.data, config.mesh.model) if mesh is None else mesh
    model = make_model(config.model, vocab_size=vocab, max_length=config.data.max_length)
    rules = config.mesh.get("logical_axis_rules", DEFAULT_AXIS_RULES)
    return Trainer(model, tx, mesh, batch_size=config.data.batch_size, rules=rules)


def step_callable(trainer, inputs_BxL: np.ndarray, targets_BxL: np.ndarray, seed: int = 0) -> Callable[[], object]:
    """A zero-argument callable running ``trainer.step`` on one fixed batch, the state kept inside.

    The batch is placed with the trainer's batch sharding once (as the
    training loop's prefetch does), and each call blocks on the new state.
    """
    import jax

    inputs, targets = (jax.device_put(a, trainer.batch_sharding) for a in (inputs_BxL, targets_BxL))
    box = {"state": trainer.init(jax.random.key(seed))}

    def one_step():
        box["state"], metrics = trainer.step(box["state"], inputs, targets)
        jax.block_until_ready(box["state"])
        return metrics

    return one_step


def jax_step(batch: int, length: int, features: int, vocab: int, overrides: dict | None = None, tx=None):
    """jaxembed's train step at these sizes on this case's batch, compiled and warmed up once.

    The warm-up is the first step from the initial state: its loss is kept as
    ``step.first_loss`` (variants of one case start from the same state and
    batch, so their first losses should agree).
    """
    config = make_config(batch, length, features, overrides)
    step = step_callable(make_trainer(config, vocab, tx=tx), *train_batch(batch, length, vocab), seed=config.seed)
    step.first_loss = float(step()["loss"])
    return step


# --- Child processes -------------------------------------------------------------------


def rss_kib() -> dict[str, int]:
    """This process's resident set now (``VmRSS``), its high-water mark (``VmHWM``) and the resident set's
    anonymous and file-backed parts (``RssAnon``, ``RssFile``: mapped file pages, e.g. of a memory map), KiB.
    """
    text = pathlib.Path("/proc/self/status").read_text()
    out = {}
    for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
        match = re.search(key + r":\s+(\d+)", text)
        if match:
            out[key] = int(match.group(1))
    return out


def reset_peak() -> bool:
    """Resets this process's ``VmHWM`` to its current resident set; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_child(module: str, spec: dict, env: dict | None = None, timeout: float = 900) -> dict:
    """``python -m <module> --child <spec>`` in a fresh process; its last JSON line.

    Raises:
      RuntimeError: the child failed or printed no JSON (its stderr's tail is in the message).
    """
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", module, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{module} child {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def child_entry(child_main: Callable[[dict], dict], argv: list[str] | None = None) -> int:
    """The ``--child SPEC`` command line of a module whose ``child_main`` runs in ``run_child``."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True, help="the JSON spec")
    args = parser.parse_args(argv)
    print(json.dumps(child_main(json.loads(args.child)), default=float), flush=True)
    return 0
