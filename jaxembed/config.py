"""Training configuration: loading a config by name or path, and the rules every field must follow.

The named configs live in the top-level ``configs/`` folder (shipped in the wheel as
``jaxembed.configs``): ``default.py`` lists every field with its meaning; ``tiny.py`` and
``gpt2_small.py`` start from it and change a few. ``load`` finds them by name
(``--config tiny``) or runs a copy by path; ``validate`` checks a config before anything runs.

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
from collections.abc import Sequence
from typing import Any

import ml_collections

from jaxembed.configs import default
from jaxembed.errors import InvalidArgumentError, check_int, check_positive_int


def base_config() -> ml_collections.ConfigDict:
    """The default config (``configs/default.py``): every field, with its meaning in a comment there.

    Example:
      >>> base_config().model.features
      256
    """
    return default.get_config()


def named_config(name: str) -> ml_collections.ConfigDict:
    """The named config ``name`` (one of ``CONFIGS``), from ``jaxembed.configs``.

    Raises:
      ConfigError: no config has that name.

    Example:
      >>> named_config("tiny").train.steps
      300
    """
    import importlib

    if name not in CONFIGS:
        raise ConfigError(f"no named config {name!r}; choose one of {', '.join(CONFIGS)}.")
    return importlib.import_module(f"jaxembed.configs.{name}").get_config()


class ConfigError(InvalidArgumentError):
    """A config cannot be loaded: no such name or file, an unknown field, or a bad value."""


#: Where the named config files are: the repo's top-level configs/, or jaxembed/configs in a wheel.
CONFIG_DIR = pathlib.Path(default.__file__).resolve().parent

#: Configs shipped inside the package (``jaxembed.configs``), by the name ``--config NAME`` takes.
CONFIGS: tuple[str, ...] = ("tiny", "default", "gpt2_small")

_DTYPES = ("float32", "bfloat16", "float16")


#: Fields added after the first runs were written, with the value that reproduces what such a run
#: did before the field existed (an old run had no attention layer, no loss tiles, no event files).
_ADDED_FIELDS: dict[str, Any] = {
    "model.num_layers": 0,
    "model.num_heads": 1,
    "model.loss_tile_tokens": 0,
    "model.active_vocab": False,
    "data.tokens": None,
    "data.val_tokens": None,
    "data.text": None,
    "mesh.logical_axis_rules": default.AXIS_RULES,
    "train.tensorboard": False,
    "train.profile_steps": "",
}


def upgrade_run_config(stored: dict) -> dict:
    """A run's stored ``config.json`` with fields added since it was written filled in (a new dict).

    Each added field gets the value that reproduces what the run did before the field existed,
    so an old run reads back (and resumes) as it was trained.

    Example:
      >>> upgrade_run_config({"model": {"features": 8}})["model"]["num_layers"]
      0
    """
    upgraded = {k: (dict(v) if isinstance(v, dict) else v) for k, v in stored.items()}
    for path, value in _ADDED_FIELDS.items():
        section, name = path.split(".")
        upgraded.setdefault(section, {})
        upgraded[section].setdefault(name, [list(r) for r in value] if path.endswith("axis_rules") else value)
    return upgraded


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects settings that cannot run, naming the field path and the rule.

    Raises:
      InvalidArgumentError: e.g. ``train.steps=0 is not allowed: it must be an integer >= 1.``

    Example:
      >>> c = named_config("tiny")
      >>> c.train.steps = 0
      >>> validate(c)
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: train.steps=0 is not allowed: it must be an integer >= 1.
    """
    t = config.train
    for name in ("steps", "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints"):
        check_positive_int(t[name], f"train.{name}")
    for name in ("max_length", "stride", "batch_size"):
        check_positive_int(config.data[name], f"data.{name}")
    check_int(config.data.num_workers, "data.num_workers", minimum=0)
    if config.model.loss_tile_tokens is not None:  # None: chosen by bytes (nn.losses.auto_tile_tokens)
        check_int(config.model.loss_tile_tokens, "model.loss_tile_tokens", minimum=0)  # 0: dense
    for name in ("features", "vocab_multiple"):
        check_positive_int(config.model[name], f"model.{name}")
    for name in ("dtype", "param_dtype"):
        if config.model[name] not in _DTYPES:
            allowed = ", ".join(repr(d) for d in _DTYPES)
            raise InvalidArgumentError(f"model.{name}={config.model[name]!r} is not allowed; use one of {allowed}.")
    parse_profile_steps(t.profile_steps, total_steps=t.steps)
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
    base = named_config(name_or_path) if named else _load_config_module(name_or_path).get_config()
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
