"""Train-step time on meshes of 1 .. N devices, in a child process with N simulated CPU devices.

``--xla_force_host_platform_device_count=N`` must be set before JAX starts,
so ``section`` runs ``child_main`` in a fresh process
(``python -m benchmarks.mesh --child SPEC``). Every step is
``Trainer.from_config(config, vocab, mesh=make_mesh(d, 1, devices[:d]))``:
the state and the batch are split over the ``data`` axis exactly as
``jaxembed train`` splits them. The simulated devices share this host's
cores, so the figures show the cost of sharding (collectives, smaller
per-device matmuls), not a speedup.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import sys

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402


def child_main(spec: dict) -> dict:
    """Median step time of each ``(config, devices)`` in ``spec``; runs under the parent's XLA_FLAGS."""
    import jax

    from jaxembed.config import named_config
    from jaxembed.train.trainer import make_mesh

    settings = harness.Settings(reps=spec["reps"], warmup=1, min_rep_s=spec["min_rep_s"])
    rows = []
    for name in spec["configs"]:
        config = harness.apply_overrides(named_config(name), spec.get("overrides"))
        b, length = config.data.batch_size, config.data.max_length
        batch = harness.train_batch(b, length, spec["vocab"])
        impls = {}
        for d in spec["devices"]:
            trainer = harness.make_trainer(config, spec["vocab"], mesh=make_mesh(d, 1, jax.devices()[:d]))
            impls[f"{d} devices"] = harness.step_callable(trainer, *batch, seed=config.seed)
        times = harness.measure(impls, settings)
        for d in spec["devices"]:
            rows.append(
                {
                    "config": name,
                    "case": f"{name}: B={b} L={length} D={config.model.features} V={spec['vocab']:,}",
                    "devices": d,
                    "step_s": statistics.median(times[f"{d} devices"]),
                    "times_s": times[f"{d} devices"],
                }
            )
    return {"device_count": jax.device_count(), "rows": rows}


def section(settings: harness.Settings) -> dict:
    """Step time on 1, 2 and 8 simulated devices (quick: the tiny config at V=4,096 on 1 and 2)."""
    if settings.quick:
        spec = {"configs": ["tiny"], "devices": [1, 2], "vocab": 4096, "reps": settings.reps, "min_rep_s": 0.02}
    else:
        spec = {
            "configs": ["tiny", "default"],
            "devices": [1, 2, 8],
            "vocab": harness.GPT2_VOCAB,
            "reps": settings.reps,
            "min_rep_s": settings.min_rep_s,
        }
    count = max(spec["devices"])
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    out = harness.run_child("benchmarks.mesh", spec, env={"XLA_FLAGS": flags})
    for row in out["rows"]:
        one = next(r for r in out["rows"] if r["config"] == row["config"] and r["devices"] == 1)
        row["x_one_device"] = row["step_s"] / one["step_s"]
        print(
            f" mesh {row['case']:<36} {row['devices']} devices {row['step_s'] * 1e3:9.2f} ms "
            f"({row['x_one_device']:.2f}x one device)",
            flush=True,
        )
    return out


if __name__ == "__main__":
    sys.exit(harness.child_entry(child_main))
