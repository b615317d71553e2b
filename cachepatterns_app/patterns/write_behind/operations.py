"""
The operations of write-behind that the admin page, the management commands and
the Celery tasks call: the queue's status, flushing it now, and the dead letters.

Until write-behind models exist in the project, every function answers as an empty
queue would.
"""

from __future__ import annotations

from typing import Any

__all__ = ["dead_letters", "flush", "purge", "replay", "status"]


def status() -> dict[str, Any]:
    """
    Return ``{"enabled": bool, "models": [{"label", "pending", "oldest_pending_age",
    "stream_length", "dead_letters", "consumers"}…]}`` — ages in seconds, None if empty.
    """
    return {"enabled": False, "models": []}


def flush(model: Any = None, *, wait: bool = True) -> int:
    """Flush the queued writes (of ``model``, or all); return how many rows were written."""
    return 0


def dead_letters(limit: int = 100) -> list[dict[str, Any]]:
    """Return up to ``limit`` dead letters: ``{"id", "label", "pk", "error", "attempts", "at"}``."""
    return []


def replay(ids: list[str] | None = None) -> int:
    """Queue the dead letters ``ids`` (None: all) again; return how many."""
    return 0


def purge(ids: list[str] | None = None) -> int:
    """Delete the dead letters ``ids`` (None: all); return how many."""
    return 0
