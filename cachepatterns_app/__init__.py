"""
cachepatterns: cache-aside, write-through, write-behind and refresh-ahead for
Django models and querysets on Redis.

Importing this package has no side effects (it never connects to Redis); the
public names below are loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "CacheAsideManager",
    "InvalidatingManager",
    "WriteBehindManager",
    "WriteThroughManager",
    "cache_aside",
    "flush_write_behind",
    "invalidate",
    "invalidate_family",
    "refresh_ahead",
    "write_through",
]

__version__ = "0.1.0"

_LAZY = {
    "CacheAsideManager": "cachepatterns_app.managers",
    "InvalidatingManager": "cachepatterns_app.managers",
    "WriteThroughManager": "cachepatterns_app.managers",
    "WriteBehindManager": "cachepatterns_app.managers",
    "flush_write_behind": "cachepatterns_app.operations",
    "cache_aside": "cachepatterns_app.decorators",
    "write_through": "cachepatterns_app.decorators",
    "refresh_ahead": "cachepatterns_app.decorators",
    "invalidate": "cachepatterns_app.operations",
    "invalidate_family": "cachepatterns_app.operations",
}

if TYPE_CHECKING:
    from cachepatterns_app.decorators import cache_aside, refresh_ahead, write_through
    from cachepatterns_app.managers import (
        CacheAsideManager,
        InvalidatingManager,
        WriteBehindManager,
        WriteThroughManager,
    )
    from cachepatterns_app.operations import flush_write_behind, invalidate, invalidate_family


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'cachepatterns_app' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
