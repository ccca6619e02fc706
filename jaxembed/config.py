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
import functools
import importlib.util
import math
import numbers
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from jaxembed.configs import default
from jaxembed.errors import InvalidArgumentError, check_int


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

#: The position schemes ``model.position`` takes; ``jaxembed.nn.positions`` implements them.
POSITIONS: tuple[str, ...] = ("learned", "sinusoidal", "rope", "alibi", "none")

#: Where ``model.init_from`` starts the tables: ``none`` (random) or ``gpt2`` (GPT-2 124M's).
INIT_FROM: tuple[str, ...] = ("none", "gpt2")
#: GPT-2 124M's width and positions, which ``model.init_from = "gpt2"`` needs; the same as
#: ``jaxembed.nn.pretrained.GPT2_SHAPES`` (a stage above this one: tests/test_init_from.py compares them).
GPT2_WIDTH, GPT2_POSITIONS = 768, 1024


#: Fields added after the first runs were written, with the value that reproduces what such a run
#: did before the field existed (an old run had no attention layer, no loss tiles, no event files).
_ADDED_FIELDS: dict[str, Any] = {
    "model.num_layers": 0,
    "model.num_heads": 1,
    "model.loss_tile_tokens": 0,
    "model.active_vocab": False,
    "model.position": "learned",
    "model.init_from": "none",
    "data.tokens": None,
    "data.val_tokens": None,
    "data.text": None,
    "mesh.logical_axis_rules": default.AXIS_RULES,
    "train.tensorboard": False,
    "train.profile_steps": "",
    "optim.decay_embeddings": True,
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


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def _int_rule(minimum: int | None = None, maximum: int | None = None, *, none_ok: bool = False):
    def check(value: Any, path: str) -> None:
        if value is None and none_ok:
            return
        check_int(value, path, minimum=minimum, maximum=maximum)

    return check


def _real_rule(text: str, accept: Callable[[float], bool]):
    def check(value: Any, path: str) -> None:
        if not _number(value) or not accept(float(value)):
            raise InvalidArgumentError(f"{path}={value!r} is not allowed; it must be {text}.")

    return check


def _choice_rule(choices: Callable[[], Sequence[str]]):
    def check(value: Any, path: str) -> None:
        allowed = tuple(choices())
        if value not in allowed:
            raise InvalidArgumentError(f"{path}={value!r} is not allowed; use one of {', '.join(map(repr, allowed))}.")

    return check


def _bool_rule(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{path}={value!r} is not allowed; it must be True or False.")


def _path_rule(value: Any, path: str) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise InvalidArgumentError(f"{path}={value!r} is not allowed; it must be a path (or None: unset).")


def _probes_rule(value: Any, path: str) -> None:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(t, str) and t for t in value):
        raise InvalidArgumentError(f"{path}={value!r} is not allowed; it must be a sequence of non-empty strings.")


def _axis_rules_rule(value: Any, path: str) -> None:
    ok = isinstance(value, Sequence) and all(
        isinstance(r, Sequence) and len(r) == 2 and isinstance(r[0], str) and (r[1] is None or isinstance(r[1], str))
        for r in value
    )
    if not ok:
        raise InvalidArgumentError(
            f"{path}={value!r} is not allowed; it must be (logical name, mesh axis or None) pairs."
        )


def _mesh_data_rule(value: Any, path: str) -> None:
    if value != -1:
        try:
            check_int(value, path, minimum=1)
        except InvalidArgumentError:
            raise InvalidArgumentError(
                f"{path}={value!r} is not allowed; it must be -1 (all remaining devices) or an integer >= 1."
            ) from None


def _corpora() -> Sequence[str]:
    from jaxembed.text.corpus import CORPORA

    return CORPORA


def _encodings() -> Sequence[str]:
    from jaxembed.text.tokenizer import ENCODINGS

    return list(ENCODINGS)


def _profile_rule(value: Any, path: str) -> None:
    parse_profile_steps(value)


#: The rule of every field of the schema (configs/default.py), checked by ``validate``: the one
#: place a setting is judged. tests/test_config.py walks the schema and tries a bad value for each.
FIELD_RULES: dict[str, Callable[[Any, str], None]] = {
    "seed": _int_rule(0),
    "data.corpus": _choice_rule(_corpora),
    "data.text": _path_rule,
    "data.tokens": _path_rule,
    "data.val_tokens": _path_rule,
    "data.tokenizer": _choice_rule(_encodings),
    "data.max_length": _int_rule(1),
    "data.stride": _int_rule(1),
    "data.batch_size": _int_rule(1),
    "data.val_fraction": _real_rule("a number in (0, 1)", lambda x: 0 < x < 1),
    "data.num_workers": _int_rule(0),
    "model.features": _int_rule(1),
    "model.init_stddev": _real_rule("a finite number >= 0", lambda x: x >= 0),
    "model.dtype": _choice_rule(lambda: _DTYPES),
    "model.param_dtype": _choice_rule(lambda: _DTYPES),
    "model.vocab_multiple": _int_rule(1),
    "model.active_vocab": _bool_rule,
    "model.num_layers": _int_rule(0),
    "model.num_heads": _int_rule(1),
    "model.position": _choice_rule(lambda: POSITIONS),
    "model.init_from": _choice_rule(lambda: INIT_FROM),
    "model.loss_tile_tokens": _int_rule(0, none_ok=True),  # None: chosen by bytes; 0: dense
    "optim.learning_rate": _real_rule("a finite number > 0", lambda x: x > 0),
    "optim.warmup_steps": _int_rule(0),
    "optim.final_lr_fraction": _real_rule("a number in [0, 1]", lambda x: 0 <= x <= 1),
    "optim.b1": _real_rule("a number in [0, 1)", lambda x: 0 <= x < 1),
    "optim.b2": _real_rule("a number in [0, 1)", lambda x: 0 <= x < 1),
    "optim.weight_decay": _real_rule("a finite number >= 0", lambda x: x >= 0),
    "optim.decay_embeddings": _bool_rule,
    # optax.clip_by_global_norm: a negative threshold flips the gradient (ascent), 0 zeroes it.
    "optim.grad_clip": _real_rule("a finite number > 0", lambda x: x > 0),
    "train.steps": _int_rule(1),
    "train.log_every": _int_rule(1),
    "train.eval_every": _int_rule(1),
    "train.eval_batches": _int_rule(1),
    "train.checkpoint_every": _int_rule(1),
    "train.keep_checkpoints": _int_rule(1),
    "train.tensorboard": _bool_rule,
    "train.profile_steps": _profile_rule,
    "mesh.data": _mesh_data_rule,
    "mesh.model": _int_rule(1),
    "mesh.logical_axis_rules": _axis_rules_rule,
    "report.probe_tokens": _probes_rule,
    "report.num_neighbors": _int_rule(1),
    "report.pca_tokens": _int_rule(1),
    "report.projector_tokens": _int_rule(1),
}


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects settings that cannot run or would do harm, naming the field path and the rule.

    Every field is checked against ``FIELD_RULES``, then the rules between fields. ``train``,
    ``plan`` and every command that reads a config call this.

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
    for path, rule in FIELD_RULES.items():
        section, _, name = path.rpartition(".")
        holder = config[section] if section else config
        if name not in holder:
            raise InvalidArgumentError(
                f"{path} is missing from the config; every config starts from configs/default.py."
            )
        rule(holder[name], path)
    m = config.model
    parse_profile_steps(config.train.profile_steps, total_steps=config.train.steps)
    if m.num_layers > 0 and m.features % m.num_heads:
        raise InvalidArgumentError(
            f"model.num_heads={m.num_heads} does not divide model.features={m.features}: change "
            "--config.model.num_heads or --config.model.features (or --config.model.num_layers=0)."
        )
    if m.position in ("rope", "alibi") and m.num_layers == 0:
        raise InvalidArgumentError(
            f"model.position={m.position!r} acts inside attention, but model.num_layers=0: set "
            "--config.model.num_layers=1 (or more), or another model.position."
        )
    if m.position == "rope" and m.num_layers > 0 and (m.features // m.num_heads) % 2:
        raise InvalidArgumentError(
            f"model.position='rope' needs an even head width, but model.features={m.features} // "
            f"model.num_heads={m.num_heads} = {m.features // m.num_heads}: change either."
        )
    if m.init_from == "gpt2":
        _check_gpt2_start(config)


def _check_gpt2_start(config: ml_collections.ConfigDict) -> None:
    """GPT-2's tables fit only a model of GPT-2's width, ids and (learned) context length."""
    width, positions = GPT2_WIDTH, GPT2_POSITIONS
    m, d = config.model, config.data
    if d.tokenizer != "gpt2":
        raise InvalidArgumentError(
            f"model.init_from='gpt2' needs data.tokenizer='gpt2' (the table's rows are GPT-2's token ids), "
            f"but data.tokenizer={d.tokenizer!r}: use the gpt2 tokenizer, or model.init_from='none'."
        )
    if m.active_vocab:
        raise InvalidArgumentError(
            "model.init_from='gpt2' needs model.active_vocab=False (GPT-2's table rows are GPT-2 token ids, "
            "active_vocab renumbers them), but model.active_vocab=True: set --config.model.active_vocab=False."
        )
    if m.features != width:
        raise InvalidArgumentError(
            f"model.init_from='gpt2' needs model.features={width} (GPT-2 124M's width), but "
            f"model.features={m.features}: set --config.model.features={width}, or model.init_from='none'."
        )
    if m.position == "learned" and d.max_length > positions:
        raise InvalidArgumentError(
            f"model.init_from='gpt2' with model.position='learned' has GPT-2's {positions} positions, but "
            f"data.max_length={d.max_length}: set --config.data.max_length={positions} or less, or another "
            "model.position (sinusoidal, rope, alibi and none take GPT-2's token table only)."
        )


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
            if not arg.startswith("--config."):  # a mistyped option, not a config field: no field list
                raise ConfigError(
                    f"unrecognised argument {arg!r}: not an option of this command (see --help), and config "
                    "overrides look like --config.FIELD=VALUE, e.g. --config.train.steps=100"
                )
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
        raise ConfigError(_type_error(overrides, base) or str(e)) from None
    return flag_values.config


# The numeric fields' types in words, for absl's errors that quote Python's int() or float().
_TYPE_WORDS = {int: "an integer", float: "a number"}


def _type_error(overrides: Sequence[str], base) -> str | None:
    """The field, value and type allowed of the first numeric override that does not parse, if any."""
    for arg in overrides:
        key, _, value = arg.removeprefix("--config.").partition("=")
        default = functools.reduce(lambda node, name: node[name], key.split("."), base)
        kind = type(default)
        if kind not in _TYPE_WORDS:
            continue
        try:
            kind(value)
        except ValueError:
            return f"{key}={value!r} is not allowed: {key} takes {_TYPE_WORDS[kind]} (this config: {default!r})."
    return None


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
