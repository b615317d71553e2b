"""
``@cache_aside`` and ``@write_through`` for functions and methods.

``@cache_aside`` caches what a function returns under a key built from its
arguments. With ``family=`` the key joins a family (see ``families``) and with
``depends_on=`` the family (or the key) is invalidated after commit whenever a
row of the named models is created, changed, deleted or moved between owners.
Reads take the same lease as model rows: one caller computes a missing value,
the others wait for it, and a value computed from rows read before a concurrent
write committed is never stored under the new generation.

``@write_through`` wraps a writer: once its transaction commits, what it returned
is stored under its key, so the next read is a hit with the new value.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from django.db import DEFAULT_DB_ALIAS, connections, router
from django.db.models import Model

from cachepatterns_app import catalog, stats, validation
from cachepatterns_app.arguments import KeyTarget, Signature, default_key, dependency_params
from cachepatterns_app.conf import get_settings
from cachepatterns_app.exceptions import (
    CacheUnavailable,
    ConfigurationError,
    SerializationError,
    ValueTooLarge,
)
from cachepatterns_app.families import Family
from cachepatterns_app.invalidation import after_commit, has_pending_writes, queue_for_retry
from cachepatterns_app.keys import KeyTemplate
from cachepatterns_app.leases import (
    LEASED,
    UNSET,
    await_turn,
    companion_ttl_ms,
    fill_allowed,
    lease_lifetime_ms,
    ttl_ms,
)
from cachepatterns_app.registry import Dependency, register_dependency, row_cache_for
from cachepatterns_app.results import dumps_result, loads_result, materialise
from cachepatterns_app.slots import FamilySlot, PlainSlot, Slot
from cachepatterns_app.store import get_store, new_token

__all__ = ["cache_aside", "write_through"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Family members always expire: old generations are only ever reclaimed by expiry.
FAMILY_TTL_WITHOUT_DEFAULT = 86400


def _open_connections() -> list[str]:
    return [c.alias for c in connections.all(initialized_only=True)] or [DEFAULT_DB_ALIAS]


class Target:
    """Where one decorated function stores its results: a key template, maybe in a family."""

    def __init__(self, fn: Callable[..., Any], key: str | None, family: str | None, ttl: Any) -> None:
        names = Signature(fn, []).names
        self.key = KeyTemplate(key or default_key(fn, names))
        self.family = Family(family) if family else None
        if self.family is not None and ttl is None:
            raise ConfigurationError(
                f"{fn.__qualname__}: a family member needs a TTL (old generations are only "
                "reclaimed by expiry); give ttl= in seconds."
            )
        self.signature = Signature(fn, [self.key] + ([self.family.template] if self.family else []))
        self._ttl = ttl
        self.label = self.key.template

    @property
    def ttl(self) -> int | None:
        ttl = get_settings().DEFAULT_TTL if self._ttl is UNSET else self._ttl
        if ttl is None and self.family is not None:
            return FAMILY_TTL_WITHOUT_DEFAULT
        return ttl  # type: ignore[no-any-return]

    def slot(self, params: dict[str, Any]) -> Slot:
        """Return the Redis home of the result for ``params``."""
        member = self.key.format(params)
        if self.family is None:
            return PlainSlot(member)
        ttl = self.ttl
        return FamilySlot(self.family, params, member, companion_ttl_ms(int(ttl * 1000) if ttl else 0))


class CachedFunction:
    """The state behind one ``@cache_aside`` function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        key: str | None,
        ttl: Any,
        family: str | None,
        depends_on: Mapping[type[Model], Any] | None,
    ) -> None:
        self.fn = fn
        self.target = Target(fn, key, family, ttl)
        self.signature = self.target.signature
        missing = set(self.signature.names) - set(self.target.key.fields)
        if missing:
            raise ConfigurationError(
                f"{fn.__qualname__}: key {self.target.key.template!r} leaves out "
                f"{', '.join(sorted(missing))}; calls that differ only in those would share "
                "a cached result. Add them to the key."
            )
        self.label = self.target.label
        family_ = self.target.family
        depends_target: Family | KeyTarget = family_ if family_ is not None else KeyTarget(self.target.key)
        #: The label under which writes of ``depends_on`` rows are recorded.
        self.dependency_label = depends_target.label
        for model, spec in (depends_on or {}).items():
            params, fields = dependency_params(fn, model, spec, depends_target)
            register_dependency(Dependency(model, depends_target, params, fields))
        catalog.declare(self, ttl, family, depends_on)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        params = self.signature.params(args, kwargs)
        slot = self.target.slot(params)
        if any(has_pending_writes(alias, self.dependency_label) for alias in _open_connections()):
            # This transaction changed rows the result depends on: show it its writes.
            stats.record("bypass", self.label)
            return self._compute(args, kwargs)
        store = get_store()
        token = new_token()
        lease_ms = lease_lifetime_ms()
        corrupt = 0
        while True:
            try:
                reply = await_turn(lambda: slot.read(store, token, lease_ms), self.label)
            except CacheUnavailable:
                stats.record("degraded", self.label)
                if not get_settings().DEGRADE_ON_FAILURE:
                    raise
                return self._compute(args, kwargs)
            if reply is None:
                stats.record("bypass", self.label)
                return self._compute(args, kwargs)
            if reply[0] == LEASED:
                return self._load_and_fill(args, kwargs, slot, token, reply[-1])
            try:
                value = loads_result(reply[1])
            except SerializationError as e:
                logger.warning("Discarding unreadable cached result of %s: %s", self.fn.__qualname__, e)
                stats.record("corrupt", self.label)
                corrupt += 1
                if corrupt > 1 or not self._forget_now(slot):
                    return self._compute(args, kwargs)
                continue
            stats.record("hit", self.label)
            return value

    def _compute(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return materialise(self.fn(*args, **kwargs))

    def _load_and_fill(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], slot: Slot, token: str, generation: Any
    ) -> Any:
        stats.record("miss", self.label)
        allowed = all(fill_allowed(alias) for alias in _open_connections())
        store = get_store()
        try:
            value = self._compute(args, kwargs)
        except BaseException:
            store.send_no_reply([slot.release(token, generation)])
            raise
        payload = self._encode(value) if allowed else None
        if payload is None:
            store.send_no_reply([slot.release(token, generation)])
            if not allowed:
                stats.record("bypass", self.label)
            return value
        store.send_no_reply([slot.fill(token, generation, payload, ttl_ms(self.target.ttl))])
        stats.record("fill", self.label)
        # What a miss returns must equal what the hits after it return.
        return loads_result(payload) if _plain(value) else value

    def _encode(self, value: Any) -> bytes | None:
        try:
            return dumps_result(value)
        except SerializationError as e:
            logger.warning("Not caching the result of %s: %s", self.fn.__qualname__, e)
            stats.record("too_large" if isinstance(e, ValueTooLarge) else "error", self.label)
            return None

    def _forget_now(self, slot: Slot) -> bool:
        try:
            get_store().pipeline([slot.forget()])
        except CacheUnavailable:
            queue_for_retry({slot.forget(): self.label})
            return False
        return True

    def forget(self, params: Mapping[str, Any], using: str) -> None:
        """Forget the result cached for ``params`` once ``using`` commits."""
        slot = self.target.slot(self.signature.with_defaults(params))
        after_commit([(slot.forget(), self.label)], using)


def _plain(value: Any) -> bool:
    return not isinstance(value, Model) and not (
        isinstance(value, list) and value and isinstance(value[0], Model)
    )


def cache_aside(
    key: str | None = None,
    *,
    ttl: int | None = UNSET,
    family: str | None = None,
    depends_on: Mapping[type[Model], Any] | None = None,
) -> Callable[[F], F]:
    """
    Cache the function's result under ``key`` (formatted from its arguments).

    ``family`` groups keys for O(1) invalidation; ``depends_on`` maps models to the
    attribute (or callable) that gives the family parameters of a changed row.
    The decorated function gains ``.invalidate(using=None, **params)``,
    ``.key(**params)`` and ``.cached`` (the state object).
    """
    validation.check_decorator(key, ttl, "cache_aside")

    def decorate(fn: F) -> F:
        cached = CachedFunction(fn, key, ttl, family, depends_on)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return cached(*args, **kwargs)

        def invalidate(using: str = DEFAULT_DB_ALIAS, **params: Any) -> None:
            """Forget the result cached for ``params`` (after ``using`` commits, if in a transaction)."""
            cached.forget(params, using)

        def key_of(**params: Any) -> str:
            """Return the logical key of the result for ``params`` (defaults filled in)."""
            return cached.target.key.format(cached.signature.with_defaults(params))

        wrapper.invalidate = invalidate  # type: ignore[attr-defined]
        wrapper.key = key_of  # type: ignore[attr-defined]
        wrapper.cached = cached  # type: ignore[attr-defined]
        return cast("F", wrapper)

    return decorate


def write_through(
    key: str | None = None, *, ttl: int | None = UNSET, family: str | None = None
) -> Callable[[F], F]:
    """
    Store the writer's return value under ``key`` once its transaction commits.

    Readers decorated with ``@cache_aside`` with the same ``key`` (and ``family``)
    then hit the new value. Outside a family, if the value is a model instance with
    a write-through version (or a dict with an integer ``"version"``), the put never
    replaces a newer version; otherwise concurrent writers are not ordered (last to
    reach Redis wins).
    """
    validation.check_decorator(key, ttl, "write_through")

    def decorate(fn: F) -> F:
        target = Target(fn, key, family, ttl)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = materialise(fn(*args, **kwargs))
            _schedule_put(target, target.signature.params(args, kwargs), result)
            return result

        return cast("F", wrapper)

    return decorate


def _schedule_put(target: Target, params: dict[str, Any], value: Any) -> None:
    slot = target.slot(params)
    label = target.label
    using = _db_for(value)
    try:
        payload = dumps_result(value)
    except SerializationError as e:
        # Cannot store the new value: make sure the old one is not served either.
        logger.warning("write_through %s: %s; invalidating instead", slot.member, e)
        after_commit([(slot.forget(), label)], using)
        return
    ms = ttl_ms(target.ttl)
    command = slot.put(payload, ms, _version_of(value), companion_ttl_ms(ms))

    def put() -> None:
        try:
            (reply,) = get_store().pipeline([command])
        except CacheUnavailable as e:
            logger.error("write_through put of %s failed (%s); invalidating on recovery", slot.member, e)
            queue_for_retry({slot.forget(): label})
            return
        stats.record("put" if reply == 1 else "stale_refused", label)

    after_commit([], using, put)


def _db_for(value: Any) -> str:
    first = value[0] if isinstance(value, list) and value else value
    if isinstance(first, Model):
        return first._state.db or router.db_for_write(type(first))
    return DEFAULT_DB_ALIAS


def _version_of(value: Any) -> int | None:
    if isinstance(value, Model):
        name = getattr(row_cache_for(type(value)), "version_name", None)
        version = getattr(value, name, None) if name else None
        return version if isinstance(version, int) else None
    if isinstance(value, dict) and isinstance(value.get("version"), int):
        return int(value["version"])
    return None
