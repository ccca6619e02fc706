"""One-off accelerator check: devices, a fixed-length training run, tokens/s, peak memory.

Run once on a machine with a GPU or TPU (any number of local devices):

  python scripts/accelerator_check.py                      # the default config, 100 steps
  python scripts/accelerator_check.py --config gpt2_small --steps 50

It trains on the offline `python-docs` corpus, so it needs no network.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="a named config (tiny, default, gpt2_small) or a file")
    parser.add_argument("--steps", type=int, default=100)
    args, overrides = parser.parse_known_args()

    import jax

    from jaxembed import corpus, train
    from jaxembed.cli import load_config

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s):")
    for device in jax.devices():
        print(f"  {device.id}: {device.device_kind} ({device.platform})")

    config = load_config(args.config, overrides)
    config.data.corpus, config.data.text = "python-docs", None
    config.train.steps = args.steps
    config.train.log_every = config.train.eval_every = max(args.steps // 5, 1)
    config.train.checkpoint_every = args.steps
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        result = train.train_and_evaluate(config, workdir, text=corpus.load_text("python-docs"), progress=False)
    elapsed = time.perf_counter() - started

    speeds = [row["tokens_per_sec"] for row in result.metrics[2:] if "tokens_per_sec" in row]
    tokens_per_step = config.data.batch_size * config.data.max_length
    print(
        f"\nconfig {args.config}: width {config.model.features}, context {config.data.max_length}, "
        f"global batch {config.data.batch_size}, dtype {config.model.dtype}"
    )
    if speeds:
        median = statistics.median(speeds)
        print(
            f"throughput: {median:,.0f} tokens/s ({tokens_per_step / median * 1e3:.2f} ms/step, "
            "median over log windows after the first)"
        )
    val = [row["val_loss"] for row in result.metrics if "val_loss" in row]
    print(f"validation loss {val[0]:.3f} -> {val[-1]:.3f} in {args.steps} steps; wall time {elapsed:.1f} s")
    for device in jax.local_devices():
        stats = device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        print(f"peak memory on {device}: " + (f"{peak / 2**20:,.1f} MiB" if peak else "not reported by this backend"))


if __name__ == "__main__":
    main()
