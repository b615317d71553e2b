"""
The Redis side of a refresh-ahead key: the one-round-trip read that also says
whether the value is due (and takes the refresh lease), the fill that stores the
compute time beside the value, and the keys a worker's begin/fill/fail scripts
check. A plain key and a row use :class:`PlainRefresh`; a family member
:class:`RefreshFamilySlot`, whose keys embed the generation.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from typing import Any, NamedTuple

from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.families import Command, Family
from cachepatterns_app.keys import hot_keys_key, meta_key
from cachepatterns_app.patterns.refresh_ahead import policy
from cachepatterns_app.patterns.refresh_ahead.policy import Reading
from cachepatterns_app.slots import FamilySlot, PlainSlot
from cachepatterns_app.store import SCRIPTS, Store

__all__ = [
    "DUE",
    "PENDING",
    "PlainRefresh",
    "RefreshFamilySlot",
    "RefreshPlainSlot",
    "Touch",
    "sampled_touch",
    "text",
]

logger = logging.getLogger(__name__)

#: ``ra_read.lua``'s states beyond read.lua's: a due hit whose reader took the refresh
#: lease (it schedules the refresh), and a due hit whose refresh is already pending.
DUE, PENDING = 4, 5


class Touch(NamedTuple):
    """A sampled read's increment of the hot set."""

    key: str
    member: str


def sampled_touch(db: str, member: list[Any]) -> Touch | None:
    """
    Return, for a share ``HOT_SAMPLE`` of the reads, the hot-set increment of the key
    ``member`` describes (``["f", name, params]`` or ``["r", model, pk]``) in
    database ``db``'s set; None for the other reads and for members too long to count.
    """
    if random.random() >= policy.HOT_SAMPLE:
        return None
    encoded = json.dumps(member, separators=(",", ":"), sort_keys=True)
    if len(encoded.encode()) > policy.HOT_MEMBER_BYTES:
        return None
    return Touch(hot_keys_key(db), encoded)


def text(value: Any) -> str:
    """Return a generation or token from a Redis reply as text ('' for None)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def run_read(store: Store, script: str, keys: Sequence[str], args: Sequence[Any], touch: Touch | None) -> Any:
    """Run a read script; with ``touch``, count the read in the hot set in the same round trip."""
    if touch is None:
        return store.script(script, keys, args)
    replies = store.pipeline(
        [
            ("SCRIPT", script, tuple(keys), tuple(args)),
            ("SCRIPT", "ra_touch", (touch.key,), (touch.member, policy.HOT_CAPACITY)),
        ],
        raise_on_error=False,
    )
    reply, touched = replies
    if isinstance(reply, Exception):
        raise CacheUnavailable(f"Redis refused a refresh-ahead read: {reply}") from reply
    if isinstance(touched, Exception):
        logger.debug("Hot-set increment refused: %s", touched)
    return reply


class PlainRefresh:
    """The keys and commands of a value under its own key (a plain result, a row)."""

    def __init__(self, value: str, lease: str) -> None:
        self.keys = (value, lease, meta_key(value))

    def read(
        self, store: Store, token: str, lease_ms: int, reading: Reading, refresh: str, touch: Touch | None
    ) -> list[Any]:
        """Return ``ra_read.lua``'s answer; a due hit gets ``refresh`` as its lease."""
        args = (token, lease_ms, reading.window_ms, reading.xfetch, refresh, "")
        return list(run_read(store, "ra_read", self.keys, args, touch))

    def claim(self, lease_ms: int, horizon_ms: int, refresh: str) -> Command:
        """Return the command taking the refresh lease if less than ``horizon_ms`` is left."""
        return ("SCRIPT", "ra_read", self.keys, (refresh, lease_ms, horizon_ms, 0, refresh, "claim"))

    def fill_timed(self, token: str, payload: bytes, ttl: int, delta_ms: int) -> Command:
        """Return the reply-less fill of a value computed in ``delta_ms``."""
        return ("EVAL", SCRIPTS["ra_fill"], 3, *self.keys, token, payload, ttl, delta_ms, "", 0)

    def forget(self) -> Command:
        """Return the command dropping the value, its lease (and so any refresh) and its meta."""
        return ("DEL", *self.keys)


class RefreshPlainSlot(PlainSlot):
    """A refresh-ahead result under its own key."""

    def __init__(self, db: str, member: str, reading: Reading, touch: Touch | None, alias: str) -> None:
        super().__init__(db, member)
        self.refresh = PlainRefresh(self.keys.value, self.keys.lease)
        self.reading = reading
        self.touch = touch
        self.alias = alias
        self.generation_ttl = 0
        self.refresh_token = ""

    def read(self, store: Store, token: str, lease_ms: int) -> list[Any]:
        self.refresh_token = "r:" + token
        reply = self.refresh.read(store, token, lease_ms, self.reading, self.refresh_token, self.touch)
        return [*reply, None]

    def script_keys(self, generation: str) -> tuple[str, ...]:
        """Return the KEYS of ``ra_begin``/``ra_fill``/``ra_fail``."""
        return self.refresh.keys

    def claim(self, lease_ms: int, horizon_ms: int, refresh: str) -> Command:
        return self.refresh.claim(lease_ms, horizon_ms, refresh)

    @staticmethod
    def claimed(reply: Any) -> tuple[bool, str]:
        """Return (whether a claim took the lease, the generation it saw)."""
        return reply[0] == DUE, ""

    def fill_timed(self, token: str, generation: Any, payload: bytes, ttl: int, delta_ms: int) -> Command:
        return self.refresh.fill_timed(token, payload, ttl, delta_ms)

    def forget(self) -> Command:
        return self.refresh.forget()


class RefreshFamilySlot(FamilySlot):
    """A refresh-ahead result stored as a member of a family's current generation."""

    def __init__(
        self,
        family: Family,
        params: dict[str, Any],
        member: str,
        generation_ttl: int,
        using: str,
        reading: Reading,
        touch: Touch | None,
    ) -> None:
        super().__init__(family, params, member, generation_ttl, using)
        self.reading = reading
        self.touch = touch
        self.alias = using
        self.refresh_token = ""

    def _args(
        self, token: str, lease_ms: int, window_ms: int, xfetch: float, refresh: str, mode: str
    ) -> tuple[Any, ...]:
        base, member = self.keys.base, self.member
        return (base, member, token, lease_ms, self.generation_ttl, window_ms, xfetch, refresh, mode)

    def read(self, store: Store, token: str, lease_ms: int) -> list[Any]:
        self.refresh_token = "r:" + token
        r = self.reading
        args = self._args(token, lease_ms, r.window_ms, r.xfetch, self.refresh_token, "")
        reply = run_read(store, "ra_family_read", (self.keys.generation,), args, self.touch)
        # ra_family_read answers [state, generation, ...]; slots answer [state, ..., generation].
        return [reply[0], *reply[2:], reply[1]]

    def script_keys(self, generation: str) -> tuple[str, ...]:
        value, lease = self.keys.member(generation, self.member)  # type: ignore[arg-type]
        return (value, lease, self.keys.member_meta(generation, self.member), self.keys.generation)

    def claim(self, lease_ms: int, horizon_ms: int, refresh: str) -> Command:
        args = self._args(refresh, lease_ms, horizon_ms, 0, refresh, "claim")
        return ("SCRIPT", "ra_family_read", (self.keys.generation,), args)

    @staticmethod
    def claimed(reply: Any) -> tuple[bool, str]:
        return reply[0] == DUE, text(reply[1])

    def fill_timed(self, token: str, generation: Any, payload: bytes, ttl: int, delta_ms: int) -> Command:
        gen = text(generation)
        keys = self.script_keys(gen)
        return ("EVAL", SCRIPTS["ra_fill"], 4, *keys, token, payload, ttl, delta_ms, gen, self.generation_ttl)
