"""Errors a user can act on, and the argument checks every zoo class runs at construction.

Anything a user can cause (a config value, a data file, a checkpoint) raises ``ValueError`` (or
``FileNotFoundError``) with a message that names the argument, or the file and line. ``zoo`` prints such a
message as one ``error: ...`` line and exits non-zero; ``ZOO_DEBUG=1`` (or ``--debug``) shows the traceback.
"""

from __future__ import annotations

from typing import Any


def check_positive(owner: str, **values: Any) -> None:
    """Every given value (sizes, counts) is a positive integer; ``None`` means "not set" and passes.

    Raises:
        ValueError: ``"{owner}: batch_size must be a positive integer, got 0"``.
    """
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


def check_non_negative(owner: str, **values: Any) -> None:
    """Every given value is a number >= 0 (``None`` passes)."""
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ValueError(f"{owner}: {name} must be >= 0, got {value!r}")


def check_positive_number(owner: str, **values: Any) -> None:
    """Every given value is a number > 0, float or int (``None`` passes)."""
    for name, value in values.items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise ValueError(f"{owner}: {name} must be a number > 0, got {value!r}")


def check_probability(owner: str, *, open_low: bool = False, **values: Any) -> None:
    """Every given value lies in [0, 1] (``(0, 1]`` with ``open_low``; ``None`` passes)."""
    for name, value in values.items():
        if value is None:
            continue
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
        if not ok or (open_low and value == 0):
            interval = "(0, 1]" if open_low else "[0, 1]"
            raise ValueError(f"{owner}: {name} must be in {interval}, got {value!r}")
