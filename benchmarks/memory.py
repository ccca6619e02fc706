"""Memory of jaxembed's train step: XLA's buffer plan, and the peak resident set it reaches.

Two measurements per size and step variant:

* ``xla_memory``: ``Trainer(...).compiled_step.memory_analysis()``, XLA's plan
  for the compiled step: argument, output, aliased (donated state reused for
  the new state) and temporary bytes. Compiling needs no memory for the
  buffers, so this runs at sizes too large to run here (``gpt2_small``).
* ``child_main`` (``python -m benchmarks.memory --child SPEC``): in a fresh
  process, the kernel's high-water mark while the step runs, above the idle
  process with its framework imported (``/proc/self/clear_refs`` resets it;
  ``device.memory_stats()`` is ``None`` on CPU).

A step variant is a set of config overrides (``{"section.field": value}``);
``VARIANTS`` lists them, one row each: the dense loss (``model.loss_tile_tokens
= 0``, the full ``[B, L, V]`` logits), the default tile (2048 tokens: the
seed's batches fit one tile, so they run the dense program), and two tiles that
do split the seed's batches (256 splits 16 x 64; 8 splits 8 x 4). A variant
that runs the dense program at a size (its tile holds the whole batch) gets no
child of its own: its peak is the dense step's. ``plan_figures`` adds
``jaxembed.train.plan.plan`` of ``named_config("gpt2_small")`` (what ``jaxembed plan
--config gpt2_small`` prints).
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/memory.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

#: Step variants, one row each: name -> config overrides.
VARIANTS: dict[str, dict] = {
    "dense": {"model.loss_tile_tokens": 0},
    "default tile 2048": {"model.loss_tile_tokens": 2048},
    "tile 256": {"model.loss_tile_tokens": 256},
    "tile 8": {"model.loss_tile_tokens": 8},
}
#: The seed's sizes (batch, length, features), run in children; GPT-2 vocabulary.
RUN_SIZES = [(8, 4, 256), (16, 64, 256)]
#: Compiled only: too large to run on a CPU host (logits alone are 6.6 GB in float32).
COMPILE_ONLY = ("gpt2_small",)
_BYTE_FIELDS = ("argument", "output", "alias", "temp", "generated_code")


def variants() -> dict[str, dict]:
    """``VARIANTS`` whose fields the config has (always ``dense``)."""
    return {name: o for name, o in VARIANTS.items() if harness.has_fields(o)}


def size_configs(quick: bool) -> list[tuple[str, object, int]]:
    """``(name, config, vocab)`` of each size: the seed's two, then ``gpt2_small`` (compile only)."""
    from jaxembed.config import named_config

    if quick:
        return [("B=8 L=4 D=256 V=4,096", harness.make_config(8, 4, 256), 4096)]
    sizes = [
        (f"B={b} L={length} D={d} V=50,257", harness.make_config(b, length, d), harness.GPT2_VOCAB)
        for b, length, d in RUN_SIZES
    ]
    config = named_config("gpt2_small")
    name = (
        f"gpt2_small: B={config.data.batch_size} L={config.data.max_length} D={config.model.features} "
        f"V=50,257, {config.model.dtype}"
    )
    return sizes + [(name, config, harness.GPT2_VOCAB)]


def loss_tiles(config) -> int:
    """Tiles the tied head's loss runs in for ``config`` (1: the dense program), from ``tied_cross_entropy``'s rule."""
    tokens, tile = config.data.batch_size * config.data.max_length, harness.resolved_tile_tokens(config)
    return -(-tokens // tile) if 0 < tile < tokens else 1


def xla_memory(config, vocab: int) -> dict:
    """XLA's buffer plan for ``Trainer.from_config(config, vocab).compiled_step`` (bytes).

    Returns ``{argument,output,alias,temp,generated_code}_bytes``,
    ``live_bytes`` (argument + temp + output not aliased to an argument: what
    one step holds at once if every temporary were live together) and
    ``compile_s``.
    """
    start = time.perf_counter()
    stats = harness.make_trainer(config, vocab).compiled_step.memory_analysis()
    out = {f"{k}_bytes": int(getattr(stats, f"{k}_size_in_bytes")) for k in _BYTE_FIELDS}
    out["live_bytes"] = out["argument_bytes"] + out["temp_bytes"] + out["output_bytes"] - out["alias_bytes"]
    out["compile_s"] = time.perf_counter() - start
    return out


def rss_jobs(quick: bool, which: tuple[str, ...]) -> list[dict]:
    """One child spec per (run size, variant) for jaxembed, and per run size for each reference."""
    sizes = [(8, 4, 256, 4096)] if quick else [(b, length, d, harness.GPT2_VOCAB) for b, length, d in RUN_SIZES]
    jobs = []
    for b, length, d, v in sizes:
        base = {"batch": b, "length": length, "features": d, "vocab": v, "case": f"B={b} L={length} D={d} V={v:,}"}
        for name, o in variants().items():
            if name != "dense" and loss_tiles(harness.make_config(b, length, d, o)) == 1:
                continue  # the dense program: the dense child measures it
            jobs.append({**base, "impl": "jaxembed", "variant": name, "overrides": o})
        jobs += [{**base, "impl": impl, "variant": impl} for impl in which if impl != "jaxembed"]
    return jobs


def child_main(spec: dict) -> dict:
    """Peak resident memory of one train step implementation (MiB above the idle process).

    Method: import the framework and load the batch; reset the kernel's
    high-water mark and take the resident set as the baseline. Build the
    step (parameters, optimiser state, compiling) and run it once:
    ``resident`` is what it holds afterwards, ``setup_peak`` the high-water
    mark of all that. Reset the mark again and run ``units`` steps: ``peak``
    is the high-water mark while stepping (resident state included).
    """
    impl = spec["impl"]
    if impl == "jaxembed":
        import jax

        import jaxembed.train.trainer  # noqa: F401

        jax.devices()
    else:
        from benchmarks import cases

        cases._torch()
    harness.train_batch(spec["batch"], spec["length"], spec["vocab"])  # tokenizes the corpus once
    from benchmarks import cases

    resettable = harness.reset_peak()
    base = harness.rss_kib()["VmRSS"]
    case = cases.train_case(
        spec["batch"],
        spec["length"],
        spec["features"],
        which=(impl,),
        vocab=spec["vocab"],
        overrides=spec.get("overrides"),
    )
    case.impls[impl]()
    setup = harness.rss_kib()
    harness.reset_peak()
    for _ in range(spec.get("units", 2)):
        case.impls[impl]()
    run = harness.rss_kib()
    if not resettable:  # the high-water mark then includes the imports
        import resource

        setup["VmHWM"] = run["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "resident_MiB": (setup["VmRSS"] - base) / 1024,
        "setup_peak_MiB": (setup["VmHWM"] - base) / 1024,
        "peak_MiB": (run["VmHWM"] - base) / 1024,
        "baseline_MiB": base / 1024,
        "method": "VmHWM reset by /proc/self/clear_refs" if resettable else "ru_maxrss (includes imports)",
    }


def _job(spec: dict) -> dict:
    try:
        return {**spec, **harness.run_child("benchmarks.memory", spec, timeout=600)}
    except (RuntimeError, OSError) as e:
        return {**spec, "error": str(e)[-2000:]}


def start_rss(jobs: list[dict], pool: concurrent.futures.Executor) -> list[concurrent.futures.Future]:
    """Starts the children now (each peak is its own process's); collect with ``collect_rss``."""
    return [pool.submit(_job, spec) for spec in jobs]


def collect_rss(futures: list[concurrent.futures.Future]) -> list[dict]:
    rows = [f.result() for f in futures]
    for r in rows:
        if "error" in r:
            print(f"memory {r['case']} {r['variant']}: FAILED\n{r['error']}", flush=True)
        else:
            print(
                f"memory {r['case']:<28} {r['variant']:<16} resident {r['resident_MiB']:8.1f} MiB, "
                f"peak while stepping {r['peak_MiB']:8.1f} MiB, setup peak {r['setup_peak_MiB']:8.1f} MiB",
                flush=True,
            )
    return rows


def xla_section(quick: bool) -> list[dict]:
    """``xla_memory`` of every size and variant, in this process (compiling only)."""
    rows = []
    for case, config, vocab in size_configs(quick):
        for name, overrides in variants().items():
            variant_config = harness.apply_overrides(config.copy_and_resolve_references(), overrides)
            row = {
                "case": case,
                "variant": name,
                "loss_tile_tokens": variant_config.model.loss_tile_tokens,
                "tiles": loss_tiles(variant_config),
                **xla_memory(variant_config, vocab),
            }
            print(
                f"memory {case:<28} {name:<10} XLA temp {row['temp_bytes'] / 2**20:10,.1f} MiB, arguments "
                f"{row['argument_bytes'] / 2**20:8,.1f} MiB, outputs {row['output_bytes'] / 2**20:8,.1f} MiB "
                f"({row['alias_bytes'] / 2**20:,.1f} aliased)",
                flush=True,
            )
            rows.append(row)
    return rows


def plan_figures(quick: bool) -> dict:
    """``jaxembed.train.plan.plan`` of ``named_config("gpt2_small")`` (quick: of the quick size's config), plus its name."""
    from jaxembed.config import named_config
    from jaxembed.train.plan import plan

    if quick:
        name, config, vocab = "B=8 L=4 D=256 V=4,096", harness.make_config(8, 4, 256), 4096
    else:
        name, config, vocab = "gpt2_small", named_config("gpt2_small"), None
    start = time.perf_counter()
    out = {"case": name, **plan(config, vocab_size=vocab), "plan_s": time.perf_counter() - start}
    print(
        f"plan {name}: temp {out['temp_bytes'] / 2**20:,.1f} MiB, peak {out['peak_bytes'] / 2**20:,.1f} MiB, "
        f"{out['flops_per_step'] / 1e12:,.2f} TFLOP per step (tile {out['loss_tile_tokens']})",
        flush=True,
    )
    return out


if __name__ == "__main__":
    sys.exit(harness.child_entry(child_main))
