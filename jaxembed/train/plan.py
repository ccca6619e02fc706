"""Will a config fit? Parameters, memory and FLOPs of its train step, compiled but never run.

``plan(config)`` builds the one compiled train step (``Trainer.from_config``:
the program ``jaxembed train`` runs, with its shardings and donated state),
compiles it for the current backend without running it, and reads XLA's own
accounting: ``memory_analysis()`` for the per-device argument, output and
temporary buffers, ``cost_analysis()`` for the FLOPs. ``jaxembed plan``
prints the result; ``format_plan`` is its table.

XLA's ``cost_analysis()`` counts the body of a loop once, whatever its trip
count; the tiled loss is a ``lax.scan`` loop of ``B * L /
loss_tile_tokens`` iterations, so the raw figure would miss most of the tied
head's FLOPs. ``plan`` adds ``(trip count - 1)`` times each loop body's cost
(XLA's cost model of that body, on the same backend); ``xla_flops`` keeps the
raw figure.

Example:
  >>> from jaxembed.config import named_config
  >>> p = plan(named_config("tiny"))
  >>> p["params"], p["param_bytes"], p["tokens_per_step"], p["devices"]
  (1614528, 6458112, 256, 1)
  >>> p["temp_bytes"] > 0 and p["flops_per_step"] > 6 * p["params"]
  True
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxembed import config as config_lib
from jaxembed import data
from jaxembed.data import pipeline
from jaxembed.data import splits as splits_lib
from jaxembed.errors import check_positive_int
from jaxembed.nn.losses import ACCELERATOR_TILE_TOKENS
from jaxembed.text import tokenizer
from jaxembed.train.trainer import Trainer, make_mesh

log = logging.getLogger(__name__)

GiB = 2**30
MiB = 2**20
#: Device memory sizes the table gives a verdict for (GiB; common GPU sizes).
DEVICE_SIZES_GIB = (16, 24, 40, 80, 141)

# A while loop whose trip count XLA proved: `... body=%name, ... "known_trip_count":{"n":"16"} ...`.
_WHILE = re.compile(r"\swhile\(.*?body=(%[\w.\-]+).*?\"known_trip_count\":\{\"n\":\"(\d+)\"")


def _tree_bytes(tree: Any, *, per_device: bool = False) -> int:
    """Bytes of a pytree of ``ShapeDtypeStruct``; ``per_device``: of one device's shard."""

    def nbytes(x) -> int:
        shape = x.sharding.shard_shape(x.shape) if per_device else x.shape
        return math.prod(shape) * np.dtype(x.dtype).itemsize

    return sum(nbytes(x) for x in jax.tree.leaves(tree))


def _loop_body_flops(hlo_text: str, body: str, device: jax.Device) -> float:
    """XLA's flop count of the computation ``body`` of a compiled module's HLO text."""
    from jax._src.lib import _jax
    from jaxlib import _hlo

    # Make the loop body the entry computation; the other computations stay, unreachable. The module
    # header describes the old entry (its layout, donated-argument aliases), so it goes too.
    hlo_text = "HloModule loop_body\n" + hlo_text.split("\n", 1)[1].replace("\nENTRY ", "\n")
    hlo_text = re.sub(rf"^{re.escape(body)} ", f"ENTRY {body} ", hlo_text, count=1, flags=re.MULTILINE)
    module = _hlo.hlo_module_from_text(hlo_text)
    return float(_jax.hlo_module_cost_analysis(device.client, module).get("flops", 0.0))


def loop_corrected_flops(compiled: jax.stages.Compiled, device: jax.Device) -> float | None:
    """FLOPs of one run of ``compiled``, each loop body counted as often as the loop runs.

    ``compiled.cost_analysis()`` counts every ``while`` body once. For each loop
    of the entry computation whose trip count ``n`` XLA proved, this adds
    ``(n - 1)`` times XLA's cost of the body (bodies of nested loops inside it
    are counted once per outer iteration). Uses jaxlib's HLO parser, which is
    not public API.

    Returns:
      FLOPs (float), or ``None`` when this jaxlib cannot re-analyse a loop body.

    Example:
      >>> import jax.numpy as jnp
      >>> f = jax.jit(lambda x: jax.lax.fori_loop(0, 10, lambda i, y: y @ y, x))
      >>> compiled = f.lower(jnp.ones((8, 8))).compile()
      >>> loop_corrected_flops(compiled, jax.devices()[0]) >= 10 * 2 * 8**3
      True
    """
    flops = float(compiled.cost_analysis().get("flops", 0.0))
    text = compiled.as_text()
    entry_match = re.search(r"^ENTRY .*?^}", text, flags=re.MULTILINE | re.DOTALL)
    loops = _WHILE.findall(entry_match.group(0) if entry_match else "")
    try:
        for body, trips in loops:
            flops += (int(trips) - 1) * _loop_body_flops(text, body, device)
    except (ImportError, AttributeError, RuntimeError, ValueError) as e:
        log.warning(
            "cannot count the FLOPs of %d loop bodies (%s); reporting XLA's count of each body once.", len(loops), e
        )
        return None
    return flops


def plan(
    config: ml_collections.ConfigDict,
    *,
    vocab_size: int | None = None,
    mesh: Mesh | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    """Sizes, per-device memory and FLOPs of ``config``'s train step, from compiling it (never running it).

    Args:
      config: a training config (``jaxembed.config``); validated first.
      vocab_size: rows of the token table before padding; ``None``: the
        tokenizer's (``data.tokenizer``), or the corpus's ``K`` distinct ids
        with ``model.active_vocab`` and ``text``.
      mesh: the device mesh; ``None``: ``make_mesh(config.mesh.data,
        config.mesh.model)`` over all devices.
      text: a corpus to count tokens of (tokenized and split as training
        does); ``None`` skips the corpus figures.

    Returns:
      A dict of plain numbers (bytes, FLOPs and tokens are ints):
      ``params`` (count), ``param_bytes`` and ``opt_state_bytes`` (global,
      all shards), ``param_bytes_per_device``, ``opt_state_bytes_per_device``;
      per device, from XLA's ``memory_analysis()`` of the compiled step:
      ``argument_bytes``, ``output_bytes``, ``alias_bytes`` (outputs that
      reuse donated arguments), ``temp_bytes``, and ``peak_bytes`` =
      argument + output - alias + temp; ``flops_per_device`` (XLA's cost
      analysis of the partitioned step, loop bodies times their trip
      counts), ``flops_per_step`` = that times ``devices`` (every device runs
      the same program; work replicated over the ``model`` axis counts on
      each), and ``xla_flops`` (XLA's raw per-device count, loop bodies once); ``tokens_per_step`` = B * L; ``devices``,
      ``mesh`` (``{"data", "model"}``), ``backend``, ``vocab_size``,
      ``padded_vocab_size``, ``loss_tile_tokens``; with ``text`` also
      ``corpus_tokens``, ``train_tokens``, ``steps_per_epoch`` and
      ``tokens_per_epoch`` (full batches of the training split, as the
      loader drops the last short one).

    Raises:
      ValueError: a config field is invalid, ``data.batch_size`` does not
        split over the mesh's data axis, or ``vocab_size`` is not an integer
        >= 1 (messages name the field and the value).

    Example:
      >>> from jaxembed.config import named_config
      >>> p = plan(named_config("tiny"), vocab_size=1000)
      >>> p["params"] == 1024 * 32 + 16 * 32 + (4 * 32 * 32 + 6 * 32)
      True
      >>> p["opt_state_bytes"] == 2 * p["param_bytes"] + 8  # AdamW mu, nu and two step counters
      True
    """
    config_lib.validate(config)
    if config.model.loss_tile_tokens is None:  # plan is for accelerators: their choice, not this CPU's
        config = ml_collections.ConfigDict(config.to_dict())
        config.model.loss_tile_tokens = ACCELERATOR_TILE_TOKENS
    splits = None
    if text is not None:
        splits = splits_lib.load_splits(config, text=text)
    if vocab_size is None:
        vocab_size = splits.model_vocab_size if splits else tokenizer.get_encoding(config.data.tokenizer).n_vocab
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    mesh = make_mesh(config.mesh.data, config.mesh.model) if mesh is None else mesh
    pipeline.local_batch_size(config.data.batch_size, mesh)  # the batch must split over `data`

    trainer = Trainer.from_config(config, int(vocab_size), mesh)
    state = trainer.abstract_state
    memory = trainer.compiled_step.memory_analysis()
    device = mesh.devices.flat[0]
    xla_flops = float(trainer.compiled_step.cost_analysis().get("flops", 0.0))
    corrected = loop_corrected_flops(trainer.compiled_step, device)
    per_device_flops = xla_flops if corrected is None else corrected
    batch, length = config.data.batch_size, config.data.max_length
    result = {
        "params": sum(x.size for x in jax.tree.leaves(state.params)),
        "param_bytes": _tree_bytes(state.params),
        "opt_state_bytes": _tree_bytes(state.opt_state),
        "param_bytes_per_device": _tree_bytes(state.params, per_device=True),
        "opt_state_bytes_per_device": _tree_bytes(state.opt_state, per_device=True),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "peak_bytes": int(
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
        ),
        "flops_per_step": int(per_device_flops * mesh.size),
        "flops_per_device": int(per_device_flops),
        "xla_flops": int(xla_flops),
        "tokens_per_step": batch * length,
        "devices": int(mesh.size),
        "mesh": {name: int(size) for name, size in mesh.shape.items()},
        "backend": device.platform,
        "vocab_size": int(vocab_size),
        "padded_vocab_size": trainer.model.padded_vocab_size,
        "loss_tile_tokens": int(trainer.loss_tile_tokens),
        "num_layers": int(trainer.model.num_layers),
    }
    if splits is not None:
        windows = data.num_windows(len(splits.train_ids), length, config.data.stride)
        steps = windows // batch
        result |= {
            "corpus_tokens": len(splits.train_ids) + len(splits.val_ids),
            "train_tokens": len(splits.train_ids),
            "steps_per_epoch": steps,
            "tokens_per_epoch": steps * batch * length,
        }
    return result


def _size(n: int) -> str:
    return f"{n / GiB:,.2f} GiB" if n >= GiB else f"{n / MiB:,.1f} MiB"


def format_plan(p: dict[str, Any], name: str = "") -> str:
    """``plan``'s result as an aligned table with a fit verdict per common device size.

    A device "fits" when the step's peak is within the share of its memory
    JAX's allocator takes (``XLA_PYTHON_CLIENT_MEM_FRACTION``, default 0.75).

    Example:
      >>> p = {"params": 10, "param_bytes": 40, "opt_state_bytes": 88, "param_bytes_per_device": 40,
      ...      "opt_state_bytes_per_device": 88, "argument_bytes": 2 * 2**20, "output_bytes": 2**20,
      ...      "alias_bytes": 2**20, "temp_bytes": 3 * 2**30, "peak_bytes": 2 * 2**20 + 3 * 2**30,
      ...      "flops_per_step": 2e9, "flops_per_device": 2e9, "xla_flops": 2e9, "tokens_per_step": 8, "devices": 1,
      ...      "mesh": {"data": 1, "model": 1}, "backend": "cpu", "loss_tile_tokens": 0}
      >>> print(format_plan(p, "toy").splitlines()[-5])
      fits a 16 GiB device: yes (peak 3.00 GiB; JAX's pool there: 12.0 GiB)
    """
    mesh = " x ".join(f"{k}={v}" for k, v in p["mesh"].items())
    tile = p["loss_tile_tokens"]
    tiled = 0 < tile < p["tokens_per_step"]  # nn.losses.tied_cross_entropy runs the dense program otherwise
    rows = [
        ("parameters", f"{p['params']:,}", f"{p.get('num_layers', 0)} attention layer(s)"),
        ("parameter bytes", _size(p["param_bytes"]), f"{_size(p['param_bytes_per_device'])} per device"),
        ("optimiser state", _size(p["opt_state_bytes"]), f"{_size(p['opt_state_bytes_per_device'])} per device"),
        ("tokens per step", f"{p['tokens_per_step']:,}", ""),
        (
            "FLOPs per step",
            f"{p['flops_per_step']:.3g}",
            f"{p['flops_per_device']:.3g} per device (XLA cost analysis, scan loops counted per trip)",
        ),
    ]
    if "tokens_per_epoch" in p:
        rows.append(("tokens per epoch", f"{p['tokens_per_epoch']:,}", f"{p['steps_per_epoch']:,} steps"))
    rows += [
        ("per device:", "", "XLA memory_analysis() of the compiled step"),
        ("  arguments", _size(p["argument_bytes"]), "state and batch"),
        ("  outputs", _size(p["output_bytes"]), f"{_size(p['alias_bytes'])} of it reuses the donated state"),
        ("  temporaries", _size(p["temp_bytes"]), f"loss tiles of {tile:,} tokens" if tiled else "dense logits"),
        ("  peak", _size(p["peak_bytes"]), "arguments + outputs - reused + temporaries"),
    ]
    width = max(len(r[0]) for r in rows)
    value = max(len(r[1]) for r in rows)
    lines = [f"plan{' for ' + name if name else ''}: {p['devices']} {p['backend']} device(s), mesh {mesh}"]
    lines += [f"  {a:<{width}}  {b:>{value}}  {c}".rstrip() for a, b, c in rows]
    fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", 0.75))
    for gib in DEVICE_SIZES_GIB:
        verdict = "yes" if p["peak_bytes"] <= fraction * gib * GiB else "no"
        lines.append(
            f"fits {'an' if str(gib).startswith(('8', '11', '18')) else 'a'} {gib} GiB device: {verdict} (peak {p['peak_bytes'] / GiB:.2f} GiB; "
            f"JAX's pool there: {fraction * gib:.1f} GiB)"
        )
    return "\n".join(lines)
