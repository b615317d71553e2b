"""
Validate what managers and decorators are given, where they are declared.

A ``ttl="60"`` or a ``@cache_aside`` without parentheses must fail at import, with
a message naming the declaration and saying what to write — not on the first
cached read of some request in production, as a ``TypeError`` from deep inside the
read path. The system checks use the same rules (``cachepatterns.E005``/``E011``).
"""

from __future__ import annotations

import math
from typing import Any

from cachepatterns_app.exceptions import ConfigurationError
from cachepatterns_app.leases import UNSET

__all__ = ["MAX_TTL", "check_decorator", "ttl_problem", "validate_ttl"]

#: The longest lifetime accepted, in seconds (about 31 years): beyond it, mean "no
#: expiry" and write None. Also keeps every derived lifetime (twice the TTL plus a
#: lease, in milliseconds) far inside what Redis accepts.
MAX_TTL = 1_000_000_000


def ttl_problem(ttl: Any) -> str | None:
    """Return what is wrong with ``ttl`` as a lifetime in seconds, or None if it is valid."""
    if ttl is None or ttl is UNSET:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        hint = ""
        if isinstance(ttl, str) and ttl.strip().isdigit():
            hint = f" (write {ttl.strip()}, not {ttl!r})"
        return f"is the {type(ttl).__name__} {ttl!r}, not a number of seconds{hint}"
    if not math.isfinite(ttl):
        return f"is {ttl!r}; use None for no expiry"
    if ttl <= 0:
        return f"is {ttl!r}: a key that expires at once is never a hit; use a positive number of seconds"
    if ttl > MAX_TTL:
        return f"is {ttl!r} seconds, longer than {MAX_TTL:,}; use None for no expiry"
    return None


def validate_ttl(ttl: Any, where: str) -> Any:
    """
    Return ``ttl`` if it is a valid lifetime, else raise ``ConfigurationError``.

    Valid: a positive, finite int or float of seconds; None (no expiry); or the
    default marker (use ``DEFAULT_TTL``). ``where`` names the declaration in the
    message, e.g. ``"CacheAsideManager(ttl=...)"``.
    """
    problem = ttl_problem(ttl)
    if problem is not None:
        raise ConfigurationError(
            f"{where}: ttl {problem}. Pass a positive int or float of seconds (e.g. ttl=3600), "
            "None for no expiry, or leave it out to use CACHEPATTERNS['DEFAULT_TTL']."
        )
    return ttl


def check_decorator(key: Any, ttl: Any, name: str) -> None:
    """
    Raise ``ConfigurationError`` at decoration time if ``@name`` was written without
    parentheses, or with a key that is not a template string, or with a bad ``ttl``.
    """
    if callable(key):
        target = getattr(key, "__qualname__", repr(key))
        raise ConfigurationError(
            f"@{name} was applied without parentheses to {target}. Write @{name}() to use the "
            f"default key and TTL, or @{name}(key=..., ttl=...)."
        )
    if key is not None and not isinstance(key, str):
        raise ConfigurationError(
            f"@{name}(key={key!r}): the key must be a template string naming the parameters, "
            "e.g. key='user:{user_id}:posts', or left out for a key built from every parameter."
        )
    validate_ttl(ttl, f"@{name}(ttl=...)")
