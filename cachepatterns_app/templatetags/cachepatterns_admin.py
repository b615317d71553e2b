"""Filters of the cache-statistics page: rates, durations and ages for people."""

from __future__ import annotations

from typing import Any

from django import template

__all__ = ["age", "duration", "percent"]

register = template.Library()

NONE = "\N{EN DASH}"


@register.filter
def percent(value: Any) -> str:
    """Return a fraction as a percentage with one decimal (an en dash for None)."""
    if value is None:
        return NONE
    return f"{100 * float(value):.1f} %"


@register.filter
def duration(value: Any) -> str:
    """Return seconds as µs, ms or s, three significant digits."""
    if value is None:
        return NONE
    seconds = float(value)
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


@register.filter
def age(value: Any) -> str:
    """Return an age in seconds as s, min or h."""
    if value is None or value == "":  # "": a key the report lacks (Redis was down)
        return NONE
    seconds = float(value)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@register.filter
def get(mapping: Any, key: Any) -> Any:
    """Return ``mapping[key]`` (None if missing)."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None
