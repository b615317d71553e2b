"""
Where a decorated function's result lives in Redis: under a plain key, or as a
member of a family's current generation. Each kind knows the Lua calls that read,
fill, release, forget and put it, so the decorators never branch on the kind.
"""

from __future__ import annotations

from typing import Any

from cachepatterns_app.families import Command, Family
from cachepatterns_app.keys import plain_keys
from cachepatterns_app.store import SCRIPTS, Store

__all__ = ["FamilySlot", "PlainSlot", "Slot"]


class Slot:
    """The Redis home of one result."""

    member: str  # the formatted key

    def read(self, store: Store, token: str, lease_ms: int) -> list[Any]:
        """
        Return ``[state, value, generation]`` on a hit, ``[state, healed, generation]``
        with the lease, ``[state, generation]`` when busy (``read.lua``'s answer, plus
        the generation).
        """
        raise NotImplementedError

    def fill(self, token: str, generation: Any, payload: bytes, ttl: int) -> Command:
        """Return the (reply-less) command storing ``payload`` if the lease still holds."""
        raise NotImplementedError

    def release(self, token: str, generation: Any) -> Command:
        """Return the (reply-less) command giving the lease back."""
        raise NotImplementedError

    def forget(self) -> Command:
        """Return the pipeline command that drops the cached result."""
        raise NotImplementedError

    def put(self, payload: bytes, ttl: int, version: int | None, version_ttl: int) -> Command:
        """Return the pipeline command storing a writer's value."""
        raise NotImplementedError


class PlainSlot(Slot):
    """A result under its own key."""

    def __init__(self, db: str, member: str) -> None:
        self.member = member
        self.keys = plain_keys(db, member)

    def read(self, store: Store, token: str, lease_ms: int) -> list[Any]:
        reply: list[Any] = store.script("read", (self.keys.value, self.keys.lease), (token, lease_ms))
        return [*reply, None]

    def fill(self, token: str, generation: Any, payload: bytes, ttl: int) -> Command:
        return ("EVAL", SCRIPTS["fill"], 2, self.keys.value, self.keys.lease, token, payload, ttl)

    def release(self, token: str, generation: Any) -> Command:
        return ("EVAL", SCRIPTS["release"], 1, self.keys.lease, token)

    def forget(self) -> Command:
        return ("DEL", self.keys.value, self.keys.lease)

    def put(self, payload: bytes, ttl: int, version: int | None, version_ttl: int) -> Command:
        if version is None:
            return ("SCRIPT", "put_plain", (self.keys.value, self.keys.lease), (payload, ttl))
        keys = (self.keys.value, self.keys.lease, self.keys.version)
        return ("SCRIPT", "put_versioned", keys, (version, payload, ttl, version_ttl, ""))


class FamilySlot(Slot):
    """A result stored as a member of a family's current generation."""

    def __init__(
        self, family: Family, params: dict[str, Any], member: str, generation_ttl: int, using: str
    ) -> None:
        self.keys = family.keys(params, using)
        self.member = member
        self.generation_ttl = generation_ttl

    def read(self, store: Store, token: str, lease_ms: int) -> list[Any]:
        reply = store.script(
            "family_read",
            (self.keys.generation,),
            (self.keys.base, self.member, token, lease_ms, self.generation_ttl),
        )
        # family_read answers [state, generation, value?].
        return [reply[0], *reply[2:], reply[1]]

    def fill(self, token: str, generation: Any, payload: bytes, ttl: int) -> Command:
        return (
            "EVAL",
            SCRIPTS["family_fill"],
            1,
            self.keys.generation,
            self.keys.base,
            self.member,
            generation,
            token,
            payload,
            ttl,
            self.generation_ttl,
        )

    def release(self, token: str, generation: Any) -> Command:
        return (
            "EVAL",
            SCRIPTS["family_release"],
            1,
            self.keys.generation,
            self.keys.base,
            self.member,
            generation,
            token,
        )

    def forget(self) -> Command:
        return ("SCRIPT", "family_forget", (self.keys.generation,), (self.keys.base, self.member))

    def put(self, payload: bytes, ttl: int, version: int | None, version_ttl: int) -> Command:
        # Members are never versioned: a family bump is what orders their writers.
        return ("SCRIPT", "family_put", (self.keys.generation,), (self.keys.base, self.member, payload, ttl))

    def put_ordered(self, payload: bytes, ttl: int, expected: str | None, bump: bool) -> Command:
        """
        Return the put of a ``@write_through`` writer that read the generation
        ``expected`` before computing ``payload`` (``bump``: its own writes did not
        bump the family, so the put does).
        """
        args = (self.keys.base, self.member, payload, ttl, expected or "", "1" if bump else "0")
        return ("SCRIPT", "family_put_ordered", (self.keys.generation,), args)
