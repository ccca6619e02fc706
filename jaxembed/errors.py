"""jaxembed's user-facing errors and the argument checks every stage shares.

Every error that means "the input or the settings are wrong" or "a resource is missing" derives
from ``JaxembedError``; the CLI turns exactly these into one line and exit 2, so a bug (any other
exception) keeps its traceback. Subclasses also derive from the built-in class a caller would
expect (``ValueError`` for a bad value), so ``except ValueError`` keeps working.

Example:
  >>> check_positive_int(4, "max_length")
  4
  >>> check_positive_int(True, "data.batch_size")
  Traceback (most recent call last):
  ...
  jaxembed.errors.InvalidArgumentError: data.batch_size=True is not allowed: it must be an integer >= 1.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = [
    "ExistingOutputError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "JaxembedError",
    "MissingFileError",
    "NotAFileError",
    "check_int",
    "check_positive_int",
]


class JaxembedError(Exception):
    """Base class of the errors a user can fix: bad input, bad settings, a missing resource."""


class InvalidArgumentError(JaxembedError, ValueError):
    """An argument or config field holds a value that is not allowed; the message names both."""


class InvalidTypeError(JaxembedError, TypeError):
    """An argument has a type that is not allowed (e.g. float token ids); the message names it."""


class MissingFileError(JaxembedError, FileNotFoundError):
    """An input file or folder the user named does not exist."""


class NotAFileError(JaxembedError, IsADirectoryError):
    """A path the user named is a folder where a file is needed."""


class ExistingOutputError(JaxembedError, FileExistsError):
    """The output would replace something the user made; nothing was changed."""


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Returns ``value`` as an ``int`` if it is an integer (not a bool) in [minimum, maximum].

    Args:
      value: the value to check.
      name: the argument or config field path to name in the message (e.g. ``"data.max_length"``).
      minimum: the smallest allowed value, or ``None``.
      maximum: the largest allowed value, or ``None``.

    Raises:
      InvalidArgumentError: naming ``name``, the value and the allowed range.

    Example:
      >>> check_int(0, "stride", minimum=1)
      Traceback (most recent call last):
      ...
      jaxembed.errors.InvalidArgumentError: stride=0 is not allowed: it must be an integer >= 1.
    """
    if minimum is not None and maximum is not None:
        allowed = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        allowed = f"an integer >= {minimum}"
    elif maximum is not None:
        allowed = f"an integer <= {maximum}"
    else:
        allowed = "an integer"
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        raise InvalidArgumentError(f"{name}={value!r} is not allowed: it must be {allowed}.")
    return int(value)


def check_positive_int(value: Any, name: str) -> int:
    """``check_int(value, name, minimum=1)``: sizes, counts and lengths.

    Example:
      >>> check_positive_int(3, "batch_size")
      3
    """
    return check_int(value, name, minimum=1)
