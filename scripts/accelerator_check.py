"""One-off accelerator check: devices, a fixed-length training run, tokens/s, peak memory against `jaxembed plan`.

Run once on a machine with a GPU or TPU (any number of local devices):

  python scripts/accelerator_check.py                      # the default config, 100 steps
  python scripts/accelerator_check.py --config gpt2_small --steps 50
  python scripts/accelerator_check.py --config gpt2_small --config.model.loss_tile_tokens=0

It trains on the offline `python-docs` corpus, so it needs no network. Before
training it prints `jaxembed plan`'s prediction of the step's per-device peak
(arguments + outputs - donated + temporaries, from XLA's memory_analysis);
after it, each device's `peak_bytes_in_use`, so the first GPU run checks the
plan. The training loop holds a little more than one step needs (a copy of the
initial parameters for the report, the evaluation step, prefetched batches).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def positive_int(value: str) -> int:
    """argparse ``type=``: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer; give a whole number >= 1.") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not allowed; give a whole number >= 1.")
    return number


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def main() -> None:
    parser = _OneLineParser(
        description=__doc__.splitlines()[0],
        epilog="Any other --config.FIELD=VALUE overrides that config field, e.g. --config.data.batch_size=8.",
    )
    parser.add_argument(
        "--config",
        default="default",
        help="a named config (tiny, default, gpt2_small) or an ml_collections config file (default: default)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=100,
        help="optimiser steps to train (default: 100); tokens/s is the median over log windows after the first",
    )
    args, overrides = parser.parse_known_args()

    import jax

    from jaxembed import train
    from jaxembed.cli import UsageError, load_config
    from jaxembed.text import corpus
    from jaxembed.train.plan import plan

    try:
        config = load_config(args.config, overrides)
    except UsageError as e:
        parser.error(str(e))

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s):")
    for device in jax.devices():
        print(f"  {device.id}: {device.device_kind} ({device.platform})")

    config.data.corpus, config.data.text = "python-docs", None
    config.train.steps = args.steps
    config.train.log_every = config.train.eval_every = max(args.steps // 5, 1)
    config.train.checkpoint_every = args.steps
    text = corpus.load_text("python-docs")

    predicted = plan(config, text=text)
    print(
        f"\nplan: per device {_gib(predicted['peak_bytes'])} at the step's peak "
        f"(arguments {_gib(predicted['argument_bytes'])} + outputs {_gib(predicted['output_bytes'])} "
        f"- donated {_gib(predicted['alias_bytes'])} + temporaries {_gib(predicted['temp_bytes'])}); "
        f"{predicted['flops_per_step']:.3g} FLOPs per step"
    )

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        result = train.train_and_evaluate(config, workdir, text=text, progress=False)
    elapsed = time.perf_counter() - started

    speeds = [row["tokens_per_sec"] for row in result.metrics[2:] if "tokens_per_sec" in row]
    tokens_per_step = config.data.batch_size * config.data.max_length
    print(
        f"\nconfig {args.config}: width {config.model.features}, context {config.data.max_length}, "
        f"global batch {config.data.batch_size}, dtype {config.model.dtype}, "
        f"loss_tile_tokens {config.model.loss_tile_tokens} (0: dense logits)"
    )
    if speeds:
        median = statistics.median(speeds)
        step_seconds = tokens_per_step / median
        print(
            f"throughput: {median:,.0f} tokens/s ({step_seconds * 1e3:.2f} ms/step, "
            "median over log windows after the first); "
            f"{predicted['flops_per_step'] / step_seconds / 1e12:.2f} TFLOP/s by plan's FLOPs per step"
        )
    val = [row["val_loss"] for row in result.metrics if "val_loss" in row]
    print(f"validation loss {val[0]:.3f} -> {val[-1]:.3f} in {args.steps} steps; wall time {elapsed:.1f} s")
    print(
        f"predicted step peak per device: {_gib(predicted['peak_bytes'])}; the loop also keeps a copy of the "
        f"initial params ({_gib(predicted['param_bytes_per_device'])} per device)"
    )
    for device in jax.local_devices():
        stats = device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        if peak:
            ratio = peak / predicted["peak_bytes"]
            print(f"peak memory on {device}: {_gib(peak)} ({ratio:.2f} x plan's step peak)")
        else:
            print(f"peak memory on {device}: not reported by this backend")


if __name__ == "__main__":
    sys.exit(main())
