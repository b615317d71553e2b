"""
When a refresh-ahead value is due, how long a failed refresh backs off, and what
a refreshed function's arguments may be.

The decision itself runs in Lua (``ra_read.lua``), on the server's clock: a value
is *due* when less than the window (``factor * ttl``) of its lifetime is left — or,
with ``beta`` > 0, when XFetch says so instead: ``now - Δ·β·ln(rand) ≥ expiry``,
where Δ is how long the value took to compute, stored beside it. Until a Δ is known
(a value stored by a writer's put, or by a row's miss) the window decides.
:func:`refresh_due` is the same rule in Python, for documentation and tests; the
random number is drawn here and passed in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from cachepatterns_app.conf import get_settings
from cachepatterns_app.exceptions import ConfigurationError

__all__ = [
    "HOT_BATCH",
    "HOT_CAPACITY",
    "HOT_MEMBER_BYTES",
    "HOT_SAMPLE",
    "Policy",
    "Reading",
    "backoff_ms",
    "check_arguments",
    "draw",
    "refresh_due",
    "xfetch_factor",
    "xfetch_gap_ms",
]

#: Most members of one database's hot set (it is trimmed to this, coldest first).
HOT_CAPACITY = 1000
#: The share of hits that count in the hot set (piggy-backed on the read's round trip).
HOT_SAMPLE = 1 / 32
#: How many of the hottest keys ``cachepatterns.refresh_hot_keys`` looks at per run.
HOT_BATCH = 100
#: A member longer than this (a function with long text arguments) is not counted.
HOT_MEMBER_BYTES = 512

#: The source of XFetch's random numbers, in [0, 1) (tests pin it).
_random = random.random


def draw() -> float:
    """Return a random number in (0, 1] (``ln`` of it is finite)."""
    return 1.0 - _random()


def xfetch_gap_ms(delta_ms: float, beta: float, rand: float) -> float:
    """Return how long before expiry XFetch refreshes: ``Δ · β · -ln(rand)`` ms."""
    if beta <= 0 or delta_ms <= 0:
        return 0.0
    return delta_ms * beta * -math.log(rand)


def xfetch_factor(beta: float, rand: float) -> float:
    """
    Return what a read passes to the script for XFetch: ``β · -ln(rand)``, never 0
    when XFetch is on (0 tells the script it is off, and rand may be exactly 1).
    """
    if beta <= 0:
        return 0.0
    return max(beta * -math.log(rand), 1e-12)


def refresh_due(pttl_ms: int, delta_ms: float, window_ms: float, beta: float, rand: float) -> bool:
    """
    Return whether a value with ``pttl_ms`` left (-1: no expiry) is due for a refresh:
    picked by XFetch when ``beta`` > 0 and its compute time is known, else inside the
    window. ``ra_read.lua`` decides exactly this.
    """
    if pttl_ms < 0:
        return False
    if beta > 0 and delta_ms > 0:
        return xfetch_gap_ms(delta_ms, beta, rand) >= pttl_ms
    return pttl_ms < window_ms


def backoff_ms(window_ms: int) -> tuple[int, int]:
    """
    Return (base, cap) of a failed refresh's backoff in ms: the n-th consecutive
    failure waits ``base · 2^(n-1)``, at most ``cap`` — a sixteenth of the window
    (at least 100 ms) growing to half of it, so a value fails over to a few tries
    before it expires instead of hammering a failing database on every read.
    """
    base = max(100, window_ms // 16)
    return base, max(base, window_ms // 2)


def _check_fraction(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigurationError(
            f"{where}: factor is {value!r}; use a fraction between 0 and 1 (0.2 refreshes in the "
            "last fifth of the TTL), or leave it out for REFRESH_AHEAD['FACTOR']."
        )
    return float(value)


def _check_beta(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(
            f"{where}: beta is {value!r}; use 0 (XFetch off) or a positive number (1.0 is "
            "XFetch's usual choice), or leave it out for REFRESH_AHEAD['XFETCH_BETA']."
        )
    return float(value)


@dataclass(frozen=True)
class Reading:
    """What one read passes to ``ra_read.lua``."""

    window_ms: int
    #: ``β · -ln(rand)``; the script multiplies it by the value's Δ (0: XFetch off).
    xfetch: float


class Policy:
    """When the values of one function or model are refreshed."""

    def __init__(self, factor: Any, beta: Any, where: str) -> None:
        self._factor = _check_fraction(factor, where)
        self._beta = _check_beta(beta, where)
        self.where = where

    @property
    def factor(self) -> float:
        """Return the share of the TTL, at its end, in which a hit schedules a refresh."""
        if self._factor is not None:
            return self._factor
        return float(get_settings().REFRESH_AHEAD["FACTOR"])

    @property
    def beta(self) -> float:
        """Return XFetch's β (0: off)."""
        if self._beta is not None:
            return self._beta
        return float(get_settings().REFRESH_AHEAD["XFETCH_BETA"])

    def window_ms(self, ttl: float | None) -> int:
        """Return the refresh window of values stored with ``ttl`` seconds (0: they never expire)."""
        return int(self.factor * ttl * 1000) if ttl else 0

    def reading(self, ttl: float | None) -> Reading:
        """Return the arguments of one read (XFetch's random number drawn now)."""
        return Reading(self.window_ms(ttl), xfetch_factor(self.beta, draw()))


_SCALARS = (str, int, float, bool, type(None))


def check_arguments(params: dict[str, Any], where: str) -> None:
    """
    Raise ``TypeError`` unless every argument survives a trip to a worker as JSON
    unchanged: str, int, float (finite), bool or None — exactly those types, so
    that the worker calls the function with what the caller passed.
    """
    for name, value in params.items():
        kind = type(value)
        if kind not in _SCALARS or (kind is float and not math.isfinite(value)):
            raise TypeError(
                f"{where}: parameter {name!r} is {kind.__name__} {value!r}. A refresh runs in a "
                "Celery worker, which receives the arguments as JSON, so they must be str, int, "
                "float, bool or None (pass a primary key instead of an instance, text instead of "
                "a date)."
            )
