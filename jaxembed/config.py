"""Training configuration: the ml_collections schema every config file builds on.

Config files in ``configs/`` define ``get_config()`` (the Flax/nanodo
convention) and start from ``base_config()``, overriding what they change.
The same configs ship inside the package by name (``CONFIGS``: ``tiny``,
``default``, ``gpt2_small``), so ``jaxembed train --config tiny`` works from
any install, and ``validate`` checks a config before anything runs.

Example:
  >>> from jaxembed.config import base_config
  >>> c = base_config()
  >>> c.data.max_length, c.model.features
  (64, 256)
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import numbers
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from jaxembed.errors import InvalidArgumentError

#: Logical axis names -> mesh axes: the batch over `data`; token-table rows (vocab) and
#: attention heads over `model` (so mesh.model must divide model.num_heads); the rest replicated.
AXIS_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("embed", None),
    ("kv", None),
    ("position", None),
)


def base_config() -> ml_collections.ConfigDict:
    """The default training config (the seed's dimensions); every field commented.

    Example:
      >>> base_config().model.features
      256
    """
    c = ml_collections.ConfigDict()
    c.seed = 0  # PRNG seed for initialisation and data order.

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "romeo-juliet"  # Named corpus: romeo-juliet (downloaded once) or python-docs.
    # A UTF-8 file to train on instead (--text), or a directory/glob of them (at most 64 MiB,
    # tokenized in memory; larger corpora: `jaxembed tokenize` and data.tokens).
    c.data.text = config_dict.placeholder(str)
    # A token directory from `jaxembed tokenize` (--tokens): trains on its memory-mapped
    # tokens.npy, never copied; overrides data.corpus, excludes data.text.
    c.data.tokens = config_dict.placeholder(str)
    # A second token directory held out for validation (--val-tokens); else the last
    # data.val_fraction of data.tokens.
    c.data.val_tokens = config_dict.placeholder(str)
    c.data.tokenizer = "gpt2"  # tiktoken encoding; its n_vocab sizes the token table.
    c.data.max_length = 64  # Context length L: tokens per window (rows of the positional table).
    c.data.stride = 64  # Tokens between window starts (= max_length: no overlap).
    c.data.batch_size = 16  # Global batch size (split over processes and the `data` mesh axis).
    c.data.val_fraction = 0.1  # Fraction of the corpus's tokens held out, taken from its end.
    c.data.num_workers = 0  # Grain worker processes (0: batches are gathered in-process).

    c.model = ml_collections.ConfigDict()
    c.model.features = 256  # Embedding width D (GPT-2 small: 768).
    c.model.init_stddev = 0.02  # Both tables start as N(0, init_stddev^2) (GPT-2's choice).
    c.model.dtype = "float32"  # Computation dtype: float32 or bfloat16 (params stay param_dtype).
    c.model.param_dtype = "float32"  # Storage dtype of parameters and optimiser state.
    c.model.vocab_multiple = 128  # Token-table rows are padded to a multiple of this (even sharding).
    # Opt-in speed-up: train only the rows of tokens that occur in the corpus, with the
    # softmax over those K ids (a different model: its loss starts at ln K, not ln 50257).
    # Table, softmax and AdamW shrink from 50,257 to K rows (5,196 for Romeo and Juliet).
    c.model.active_vocab = False
    # Causal self-attention blocks after the input embeddings (0: embeddings only, today's
    # smallest model; then the positional table cannot learn anything position-specific).
    c.model.num_layers = 1
    c.model.num_heads = 4  # Attention heads per block; must divide model.features.
    # Tokens per tile of the tied head's loss (0: the full [B, L, V] logits at once). Batches
    # of at most this many tokens run the dense program; gpt2_small's train step needs 1.5 GiB
    # of temporaries in 16 tiles instead of 15.7 GiB (jaxembed plan --config gpt2_small).
    c.model.loss_tile_tokens = 2048

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-2  # Peak learning rate after warmup.
    c.optim.warmup_steps = 50  # Linear warmup from 0 to the peak.
    c.optim.final_lr_fraction = 0.1  # Cosine decay ends at this fraction of the peak.
    c.optim.b1 = 0.9  # Adam beta1.
    c.optim.b2 = 0.99  # Adam beta2.
    c.optim.weight_decay = 0.0  # AdamW decoupled weight decay.
    c.optim.grad_clip = 1.0  # Global-norm gradient clipping threshold.

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000  # Total optimiser steps.
    c.train.log_every = 20  # Steps between metrics rows (train loss, lr, tokens/s).
    c.train.eval_every = 100  # Steps between validation losses (and at the end).
    c.train.eval_batches = 16  # Validation batches per evaluation (fixed, in order).
    c.train.checkpoint_every = 200  # Steps between orbax checkpoints (and at the end).
    c.train.keep_checkpoints = 3  # Checkpoints kept; older ones are deleted.
    c.train.tensorboard = True  # TensorBoard event files, report images and projector in the workdir.
    c.train.profile_steps = ""  # "START,STOP": jax.profiler trace of steps [START, STOP) for TensorBoard; "" = off.

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # Devices on the data-parallel axis (-1: all remaining).
    c.mesh.model = 1  # Devices the token table's vocabulary axis is split over.
    # Logical axis name of every parameter dimension -> mesh axis (None: replicated); see AXIS_RULES.
    c.mesh.logical_axis_rules = AXIS_RULES

    c.report = ml_collections.ConfigDict()
    c.report.probe_tokens = (
        " Romeo",
        " Juliet",
        " thou",
        " love",
        " night",
        " death",
    )  # Tokens whose neighbours the report shows.
    c.report.num_neighbors = 5  # Neighbours listed per probe token.
    c.report.pca_tokens = 150  # Most frequent tokens drawn on the PCA map.
    c.report.projector_tokens = 2000  # Most frequent tokens exported for the TensorBoard projector.
    return c


def tiny_config() -> ml_collections.ConfigDict:
    """The tiny run: learns in well under a minute on 2 CPU cores.

    32-wide tables, context 16, batch 16, 300 steps, on the offline
    ``python-docs`` corpus (``configs/tiny.py`` returns this).

    Example:
      >>> c = tiny_config()
      >>> c.model.features, c.data.max_length, c.train.steps
      (32, 16, 300)
    """
    c = base_config()
    c.data.corpus = "python-docs"  # Needs no network; --text PATH for Romeo and Juliet.
    c.data.max_length = 16  # Short context: small positional table, fast steps.
    c.data.stride = 16  # No overlap between windows.
    c.data.batch_size = 16  # 256 tokens per step.
    c.model.features = 32  # Narrow tables: the dense AdamW update stays cheap on CPU.
    c.optim.learning_rate = 2e-2  # Large enough to move a 32-wide table in 300 steps.
    c.optim.warmup_steps = 20  # Short warmup for a short run.
    c.train.steps = 300  # Under a minute on 2 CPU cores.
    c.train.log_every = 10  # A metrics row every 10 steps.
    c.train.eval_every = 50  # Validation loss every 50 steps.
    c.train.eval_batches = 8  # 8 x 16 x 16 = 2,048 held-out tokens per evaluation.
    c.train.checkpoint_every = 100  # Checkpoints at 100, 200, 300.
    c.report.probe_tokens = (" Romeo", " thou", " love", " the", " return", " function")  # Probes for either corpus.
    c.report.pca_tokens = 100  # Fewer labels on the PCA map.
    c.report.projector_tokens = 1000  # Projector export of the 1,000 most frequent tokens.
    return c


def gpt2_small_config() -> ml_collections.ConfigDict:
    """GPT-2 small's embedding sizes (768 wide, 1024 context), for accelerators.

    Example:
      >>> c = gpt2_small_config()
      >>> c.model.features, c.data.max_length, c.model.dtype
      (768, 1024, 'bfloat16')
    """
    c = base_config()
    c.data.max_length = 1024  # GPT-2's context length.
    c.data.stride = 512  # Half-overlapping windows: twice the windows of a small corpus.
    c.data.batch_size = 32  # 32,768 tokens per step.
    c.model.features = 768  # GPT-2 small's width.
    c.model.dtype = "bfloat16"  # bf16 compute on accelerators; params and Adam state stay float32.
    # Embeddings only, as the seed: with the tiled loss the step needs 1.5 GiB of temporaries
    # (jaxembed plan --config gpt2_small). One attention layer (num_layers=1) adds the
    # [32, 12, 1024, 1024] attention scores: 6.9 GiB in all, for a 16 GiB+ GPU.
    c.model.num_layers = 0
    c.model.num_heads = 12  # GPT-2 small's heads (64 features each), when num_layers > 0.
    c.optim.learning_rate = 3e-3  # Wider tables want a smaller step.
    c.optim.warmup_steps = 100  # Longer warmup for the larger batch.
    c.train.steps = 2000  # Total optimiser steps.
    c.train.eval_every = 200  # Validation loss every 200 steps.
    c.train.checkpoint_every = 500  # Checkpoints at 500, 1000, 1500, 2000.
    return c


class ConfigError(InvalidArgumentError):
    """A config cannot be loaded: no such name or file, an unknown field, or a bad value."""


#: Configs shipped inside the package, by the name ``--config NAME`` takes.
CONFIGS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "tiny": tiny_config,
    "default": base_config,
    "gpt2_small": gpt2_small_config,
}

_DTYPES = ("float32", "bfloat16", "float16")


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects settings that cannot run, naming the field path and the rule.

    Raises:
      ValueError: e.g. ``train.steps=0 is not allowed; it must be an integer >= 1.``

    Example:
      >>> c = tiny_config()
      >>> c.train.steps = 0
      >>> validate(c)
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: train.steps=0 is not allowed; it must be an integer >= 1.
    """
    t = config.train
    for name in ("steps", "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints"):
        value = t[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"train.{name}={value!r} is not allowed; it must be an integer >= 1.")
    for name in ("max_length", "stride", "batch_size"):
        value = config.data[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"data.{name}={value!r} is not allowed; it must be an integer >= 1.")
    if (
        isinstance(config.data.num_workers, bool)
        or not isinstance(config.data.num_workers, int)
        or config.data.num_workers < 0
    ):
        raise InvalidArgumentError(
            f"data.num_workers={config.data.num_workers!r} is not allowed; it must be an integer >= 0."
        )
    tile = config.model.get("loss_tile_tokens", 0)
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
        raise InvalidArgumentError(
            f"model.loss_tile_tokens={tile!r} is not allowed; it must be an integer >= 0 (0: dense)."
        )
    for name in ("features", "vocab_multiple"):
        value = config.model[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"model.{name}={value!r} is not allowed; it must be an integer >= 1.")
    for name in ("dtype", "param_dtype"):
        if config.model[name] not in _DTYPES:
            allowed = ", ".join(repr(d) for d in _DTYPES)
            raise InvalidArgumentError(f"model.{name}={config.model[name]!r} is not allowed; use one of {allowed}.")
    parse_profile_steps(t.get("profile_steps", ""), total_steps=t.steps)
    lr = config.optim.learning_rate
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise InvalidArgumentError(f"optim.learning_rate={lr} is not allowed; it must be a finite number > 0.")


def load(name_or_path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """A config by name (``tiny``, ``default``, ``gpt2_small``) or file, with ``--config.a.b=v`` overrides.

    Raises:
      ConfigError: no such config, an unknown field (the message lists the
        valid ones and the closest match), or a value of the wrong type.

    Example:
      >>> load("tiny", ["--config.train.steps=5"]).train.steps
      5
    """
    from absl import flags
    from ml_collections import config_flags

    named = name_or_path in CONFIGS
    if not named and not pathlib.Path(name_or_path).is_file():
        raise ConfigError(
            f"--config {name_or_path}: no such config file, and not one of the named configs ({', '.join(CONFIGS)})."
        )
    base = CONFIGS[name_or_path]() if named else _load_config_module(name_or_path).get_config()
    valid = _flat_keys(base)
    for arg in overrides:
        key = arg.split("=", 1)[0].removeprefix("--config.")
        if not arg.startswith("--config.") or key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            if close:  # the likely fix alone; the full list would bury it
                raise ConfigError(f"unrecognised argument {arg!r}. Did you mean --config.{close[0]}?")
            raise ConfigError(
                f"unrecognised argument {arg!r}. Config overrides look like --config.FIELD=VALUE; "
                "valid fields: " + ", ".join(valid)
            )
    flag_values = flags.FlagValues()
    argv = ["jaxembed", *overrides]
    if named:
        config_flags.DEFINE_config_dict("config", base, flag_values=flag_values, lock_config=True, sys_argv=argv)
    else:
        argv.insert(1, f"--config={name_or_path}")
        config_flags.DEFINE_config_file(
            "config", name_or_path, flag_values=flag_values, lock_config=True, sys_argv=argv
        )
    try:
        flag_values(argv)
    except flags.Error as e:
        raise ConfigError(str(e)) from None
    return flag_values.config


def _load_config_module(path: str):
    spec = importlib.util.spec_from_file_location("jaxembed_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flat_keys(config, prefix: str = "") -> list[str]:
    keys = []
    for name, value in config.items():
        if hasattr(value, "items"):
            keys += _flat_keys(value, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def parse_profile_steps(value: Any, *, total_steps: int | None = None) -> tuple[int, int] | None:
    """Parses ``train.profile_steps``: ``"START,STOP"`` or ``(START, STOP)`` -> steps [START, STOP).

    Args:
      value: ``"10,15"``, ``(10, 15)``, or ``None`` / ``""`` / ``()`` for no profiling.
      total_steps: ``train.steps``; when given, START must not lie past it.

    Returns:
      ``(start, stop)`` with ``1 <= start < stop``, or ``None`` (off).

    Raises:
      ValueError: any other value; the message names ``train.profile_steps``, the value and the allowed form.

    Example:
      >>> parse_profile_steps("10, 15"), parse_profile_steps((3, 4)), parse_profile_steps("")
      ((10, 15), (3, 4), None)
      >>> parse_profile_steps("15,10")
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: train.profile_steps='15,10' is not allowed: use 'START,STOP' (or a (START, STOP) pair) of integers with 1 <= START < STOP, e.g. '10,15' traces steps 10 to 14; '' turns profiling off.
    """
    if value is None or (isinstance(value, (str, tuple, list)) and len(value) == 0):
        return None
    error = InvalidArgumentError(
        f"train.profile_steps={value!r} is not allowed: use 'START,STOP' (or a (START, STOP) pair) of integers "
        "with 1 <= START < STOP, e.g. '10,15' traces steps 10 to 14; '' turns profiling off."
    )
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or len(parts) != 2:
        raise error
    try:
        start, stop = (int(p) if isinstance(p, str) else p for p in parts)
    except ValueError:
        raise error from None
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in (start, stop)) or not 1 <= start < stop:
        raise error
    if total_steps is not None and start > total_steps:
        raise InvalidArgumentError(
            f"train.profile_steps={value!r} starts after the last step (train.steps={total_steps}); "
            f"choose START <= {total_steps}."
        )
    return int(start), int(stop)
