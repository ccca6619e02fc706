"""Train step: GPT-2 vocabulary vs ``model.active_vocab`` vs the PyTorch reference.

Needs torch (``pip install -e ".[dev,bench]"``). Run: ``python -m benchmarks.train_active``.
The active-vocabulary step is jaxembed's own step on a ``[K, D]`` table with
ids remapped to ``0..K-1``, exactly what ``train_and_evaluate`` runs when
``model.active_vocab`` is set. 5 alternating repetitions, medians.
"""

import functools
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import numpy as np
import torch

from benchmarks import cases
from benchmarks import torch_reference as tr
from jaxembed.config import base_config

torch.set_num_threads(2)
ids = cases.corpus_ids()
active = np.unique(ids)
K = len(active)


def timeit(fn, n):
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


for B, L in [(8, 4), (16, 64)]:
    x, y = cases.train_batch(B, L, cases.GPT2_VOCAB)
    xc, yc = (np.searchsorted(active, a).astype(np.int32) for a in (x, y))
    full = cases.jax_step_fn(B, L, 256, cases.GPT2_VOCAB, x, y)
    act = cases.jax_step_fn(B, L, 256, K, xc, yc)
    config = base_config()
    torch.manual_seed(0)
    model = tr.make_embedding_lm(cases.GPT2_VOCAB, L, 256, config.model.init_stddev)
    opt, sch = tr.make_optimizer(model, config.optim, config.train.steps, fused=None)
    xt, yt = (torch.from_numpy(a.astype(np.int64)) for a in (x, y))
    ref = functools.partial(tr.train_step, model, opt, sch, xt, yt, config.optim.grad_clip)
    n = 10 if L == 4 else 2
    res = {"full": [], "active": [], "ref": []}
    for r in range(5):
        for name, fn in (
            [("full", full), ("active", act), ("ref", ref)]
            if r % 2 == 0
            else [("ref", ref), ("active", act), ("full", full)]
        ):
            res[name].append(timeit(fn, n))
    med = {k: statistics.median(v) * 1e3 for k, v in res.items()}
    print(
        f"B={B} L={L} D=256: jaxembed full {med['full']:.1f} ms, active(K={K}) {med['active']:.1f} ms, torch ref {med['ref']:.1f} ms; "
        f"speedup full {med['ref'] / med['full']:.2f}x, active {med['ref'] / med['active']:.2f}x",
        flush=True,
    )
