"""
The exceptions cachepatterns raises. Each message says what to do about it.

``CachePatternsError`` is the root, so ``except CachePatternsError`` catches all.
"""

from __future__ import annotations

__all__ = [
    "CachePatternsError",
    "CacheUnavailable",
    "ConfigurationError",
    "SerializationError",
    "ValueTooLarge",
    "WriteBehindError",
]


class CachePatternsError(Exception):
    """Root of every error this app raises."""


class ConfigurationError(CachePatternsError):
    """The settings, a manager or a decorator is configured in a way that cannot work."""


class CacheUnavailable(CachePatternsError):
    """
    Redis could not be reached (or the circuit breaker is open).

    ``unsent`` is True only when the command is known not to have reached Redis (the
    breaker refused it, or no connection could be made); otherwise it may have run (a
    timeout or a dropped connection after it was sent).
    """

    def __init__(self, message: str = "", *, unsent: bool = False) -> None:
        super().__init__(
            message
            or "Redis is unreachable. Reads fall back to the database while "
            "CACHEPATTERNS['DEGRADE_ON_FAILURE'] is True; check the cache's LOCATION "
            "and that the server is up."
        )
        self.unsent = unsent


class SerializationError(CachePatternsError):
    """A value could not be encoded, or a payload read from Redis could not be decoded."""


class ValueTooLarge(SerializationError):
    """An encoded value is larger than ``MAX_VALUE_BYTES`` and was not cached."""


class WriteBehindError(CachePatternsError):
    """A write-behind write could not be queued durably and was not accepted."""
