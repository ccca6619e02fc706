"""Train-step time on 1 device vs all devices of a data-parallel mesh.

On CPU, simulate devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=8
python -m benchmarks.mesh_scaling``. Prints the median jitted step time of the
tiny and default configs on a 1-device mesh and on a mesh over every device.
"""

import functools
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxembed import train
from jaxembed.config import base_config, tiny_config

for name, config in [("tiny", tiny_config()), ("default", base_config())]:
    for data_axis in (1, jax.device_count()):
        mesh = train.make_mesh(data_axis, 1)
        model = train.make_model(config, 50257)
        tx = train.make_optimizer(config.optim, 100)
        _, shardings = train.state_shardings(model, tx, mesh)
        state = train.create_train_state(model, tx, mesh, jax.random.key(0))
        bs = NamedSharding(mesh, P("data", None))
        step = jax.jit(
            functools.partial(train.train_step, model=model, tx=tx),
            in_shardings=(shardings, bs, bs),
            out_shardings=(shardings, None),
            donate_argnums=0,
        )
        x = jax.device_put(
            np.random.randint(0, 50257, (config.data.batch_size, config.data.max_length)).astype(np.int32), bs
        )
        for _ in range(3):
            state, m = step(state, x, x)
        m["loss"].block_until_ready()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(5):
                state, m = step(state, x, x)
            m["loss"].block_until_ready()
            times.append((time.perf_counter() - t) / 5)
        print(f"{name}: devices={data_axis} step {np.median(times) * 1e3:.1f} ms", flush=True)
