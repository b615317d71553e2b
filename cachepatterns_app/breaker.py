"""
A circuit breaker in front of Redis, one per cache alias and process.

While Redis answers, the breaker is *closed* and every call goes through. After
``THRESHOLD`` consecutive connection failures or timeouts it *opens*: calls fail
at once, without paying the socket timeout, for ``COOLDOWN`` seconds. Then one
caller at a time is let through as a probe (*half-open*); its success closes the
breaker, its failure opens it for another cooldown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """Track consecutive failures and decide whether a call may go to Redis."""

    def __init__(
        self,
        name: str,
        threshold: int = 1,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._probe_started = 0.0
        self.state = CLOSED
        self.on_close: list[Callable[[], None]] = []

    def allow(self) -> bool:
        """Return whether a call may go to Redis now."""
        if self.state == CLOSED:
            return True
        with self._lock:
            if self.state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                self.state = HALF_OPEN
                self._probing = False
            # A probe whose caller never reported back must not block probing forever.
            stuck = self._probing and self._clock() - self._probe_started >= self.cooldown
            if self.state == HALF_OPEN and (not self._probing or stuck):
                self._probing = True
                self._probe_started = self._clock()
                return True
            return False

    def release(self) -> None:
        """Give back a probe whose call ended without telling whether Redis is up."""
        with self._lock:
            self._probing = False

    def success(self) -> None:
        """Record a call that Redis answered."""
        if self.state == CLOSED and not self._failures:
            return
        with self._lock:
            was_open = self.state != CLOSED
            self.state = CLOSED
            self._failures = 0
            self._probing = False
        if was_open:
            logger.warning("Redis %s answers again; circuit breaker closed", self.name)
            for callback in list(self.on_close):
                callback()

    def failure(self, error: BaseException) -> None:
        """Record a connection failure or timeout."""
        with self._lock:
            self._failures += 1
            self._probing = False
            if self.state == HALF_OPEN or self._failures >= self.threshold:
                if self.state != OPEN:
                    logger.error(
                        "Redis %s unreachable (%s); circuit breaker open for %.1fs, reads go to the database",
                        self.name,
                        error,
                        self.cooldown,
                    )
                self.state = OPEN
                self._opened_at = self._clock()
