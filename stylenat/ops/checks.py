"""Value checks that configs, models and ops share: one definition each, so they agree on what counts."""

from __future__ import annotations

import math


def is_int(value) -> bool:
    """An integer that is not a bool (YAML's true would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_power_of_two(value, minimum: int = 1) -> bool:
    """An integer power of two >= minimum."""
    return is_int(value) and value >= minimum and value & (value - 1) == 0


def is_odd_kernel(value) -> bool:
    """A kernel size neighborhood attention can centre on its query: an odd integer >= 1."""
    return is_int(value) and value >= 1 and value % 2 == 1
