"""Figures for choosing ``tile_tokens`` of ``jaxembed.nn.losses.tied_cross_entropy``.

  python scripts/tiled_loss_figures.py memory        # XLA temp bytes of jit(grad), gpt2_small sizes (compiles only)
  python scripts/tiled_loss_figures.py time          # median wall time of jit(value_and_grad), this backend
  python scripts/tiled_loss_figures.py time --dtype bfloat16 --tokens 1024 --tiles 0,256,512,1024 --reps 5

Variants are timed interleaved, so a load spike on a shared machine hits each alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jaxembed.nn.losses import tied_cross_entropy

VOCAB, ROWS = 50257, 50304  # GPT-2, padded to a multiple of 128


def memory(tokens: int, features: int, dtype: str, tiles: list[int]) -> None:
    for tile in tiles:

        def loss_fn(h, table, targets, tile=tile):
            return tied_cross_entropy(h, table, targets, num_classes=VOCAB, tile_tokens=tile, dtype=dtype)

        args = (
            jax.ShapeDtypeStruct((tokens, features), jnp.float32),
            jax.ShapeDtypeStruct((ROWS, features), jnp.float32),
            jax.ShapeDtypeStruct((tokens,), jnp.int32),
        )
        compiled = jax.jit(jax.grad(loss_fn, argnums=(0, 1))).lower(*args).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        print(f"N={tokens} D={features} V={ROWS} {dtype} tile {tile:5d}: temp {temp / 2**30:7.3f} GiB", flush=True)


def timing(tokens: int, features: int, dtype: str, tiles: list[int], reps: int) -> None:
    kh, kt, ky = jax.random.split(jax.random.key(0), 3)
    h_NxD = jax.random.normal(kh, (tokens, features))
    table_VxD = 0.02 * jax.random.normal(kt, (ROWS, features))
    targets_N = jax.random.randint(ky, (tokens,), 0, VOCAB)
    fns = {}
    for tile in tiles:

        def loss_fn(h, table, tile=tile):
            return tied_cross_entropy(h, table, targets_N, num_classes=VOCAB, tile_tokens=tile, dtype=dtype)

        fns[tile] = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
        jax.block_until_ready(fns[tile](h_NxD, table_VxD))
    seconds = {tile: [] for tile in tiles}
    for _ in range(reps):
        for tile, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(h_NxD, table_VxD))
            seconds[tile].append(time.perf_counter() - start)
    for tile, s in seconds.items():
        print(
            f"N={tokens} D={features} {dtype} tile {tile:5d}: median {statistics.median(s) * 1e3:8.1f} ms", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["memory", "time"])
    parser.add_argument("--tokens", type=int, help="N (default: 32*1024 for memory, 1024 for time)")
    parser.add_argument("--features", type=int, help="D (default: 768 for memory, 256 for time)")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 memory, float32 time)")
    parser.add_argument("--tiles", default=None, help="comma-separated tile_tokens; 0 is dense")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if args.what == "memory":
        tiles = [int(t) for t in (args.tiles or "0,8192,4096,2048,1024,512").split(",")]
        memory(args.tokens or 32 * 1024, args.features or 768, args.dtype or "bfloat16", tiles)
    else:
        tiles = [int(t) for t in (args.tiles or "0,256,512,1024,2048").split(",")]
        timing(args.tokens or 1024, args.features or 256, args.dtype or "float32", tiles, args.reps)


if __name__ == "__main__":
    main()
