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

``@refresh_ahead`` is ``@cache_aside`` whose hits near expiry schedule one
background refresh (see ``patterns.refresh_ahead``, which builds on the classes
here).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, router
from django.db.models import Model

from cachepatterns_app import catalog, stats, validation
from cachepatterns_app import params as param_fields
from cachepatterns_app.arguments import Signature, default_key, dependency_params
from cachepatterns_app.batch import BumpWatch, after_commit, has_pending_writes, watch_bumps
from cachepatterns_app.conf import get_settings
from cachepatterns_app.exceptions import (
    CacheUnavailable,
    ConfigurationError,
    SerializationError,
    ValueTooLarge,
)
from cachepatterns_app.families import Family
from cachepatterns_app.identity import NotCanonical, database_identity
from cachepatterns_app.invalidation import queue_for_retry
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
from cachepatterns_app.managers import adopt_link_models
from cachepatterns_app.registry import Dependency, register_dependency, row_cache_for
from cachepatterns_app.results import dumps_result, loads_result, materialise
from cachepatterns_app.signals import connect_model
from cachepatterns_app.slots import FamilySlot, PlainSlot, Slot
from cachepatterns_app.store import get_store, new_token

__all__ = ["CachedFunction", "Target", "cache_aside", "refresh_ahead", "write_through"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Family members always expire: old generations are only ever reclaimed by expiry.
FAMILY_TTL_WITHOUT_DEFAULT = 86400


def _open_connections() -> list[str]:
    # Only connections this thread has already made: no connection is opened (or
    # refused by a test runner) to answer "did this transaction write?".
    return [c.alias for c in connections.all(initialized_only=True)] or [DEFAULT_DB_ALIAS]


class _UsedDatabases:
    """Record which databases a computation ran SQL on, without opening any other."""

    def __init__(self) -> None:
        self.aliases: set[str] = set()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for connection in connections.all():
                stack.enter_context(connection.execute_wrapper(self._wrapper(connection.alias)))
            yield

    def _wrapper(self, alias: str) -> Callable[..., Any]:
        def record(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
            self.aliases.add(alias)
            return execute(sql, params, many, context)

        return record


class Target:
    """Where one decorated function stores its results: a key template, maybe in a family."""

    def __init__(
        self,
        fn: Callable[..., Any],
        key: str | None,
        family: str | None,
        ttl: Any,
        using: str | None = None,
        implicit_family: bool = False,
    ) -> None:
        names = Signature(fn, []).names
        self.key = KeyTemplate(key or default_key(fn, names))
        if family is None and implicit_family:
            # depends_on without a family: the key is its own family, so that its
            # invalidation can reach every spelling the database treats as equal.
            family = self.key.template
        self.family = Family(family) if family else None
        if self.family is not None and ttl is None and not implicit_family:
            raise ConfigurationError(
                f"{fn.__qualname__}: a family member needs a TTL (old generations are only "
                "reclaimed by expiry); give ttl= in seconds."
            )
        self.signature = Signature(fn, [self.key] + ([self.family.template] if self.family else []))
        self._ttl = ttl
        self.using = using
        self.label = self.key.template

    @property
    def ttl(self) -> int | None:
        ttl = get_settings().DEFAULT_TTL if self._ttl is UNSET else self._ttl
        if ttl is None and self.family is not None:
            return FAMILY_TTL_WITHOUT_DEFAULT
        return ttl  # type: ignore[no-any-return]

    def member(self, params: dict[str, Any]) -> str:
        """Return the formatted key (``NotCanonical`` if a mapped value cannot be keyed)."""
        return self.key.format(params, param_fields.converters(self.key.template))

    def slot(self, params: dict[str, Any], using: str | None = None) -> Slot:
        """Return the Redis home of the result for ``params`` (of database ``using``)."""
        member = self.member(params)
        alias = using or self.using or DEFAULT_DB_ALIAS
        if self.family is None:
            return PlainSlot(database_identity(alias), member)
        ttl = self.ttl
        return FamilySlot(self.family, params, member, companion_ttl_ms(int(ttl * 1000) if ttl else 0), alias)


class CachedFunction:
    """The state behind one ``@cache_aside`` function."""

    #: Where results are stored (``@refresh_ahead`` stores them with their compute time).
    target_class: type[Target] = Target

    def __init__(
        self,
        fn: Callable[..., Any],
        key: str | None,
        ttl: Any,
        family: str | None,
        depends_on: Mapping[type[Model], Any] | None,
        using: str | None = None,
    ) -> None:
        self.fn = fn
        self.target = self.target_class(fn, key, family, ttl, using, implicit_family=bool(depends_on))
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
        #: The label under which writes of ``depends_on`` rows are recorded.
        self.dependency_label = family_.label if family_ is not None else self.label
        for model, spec in (depends_on or {}).items():
            assert family_ is not None  # implicit_family made one
            params, fields = dependency_params(fn, model, spec, family_, self.target.key)
            register_dependency(Dependency(model, family_, params, fields))
            connect_model(model)
        if depends_on and apps.ready:
            # Imported after the app registry was ready (a module imported lazily):
            # the link models of the new dependencies still need the app's manager.
            adopt_link_models()
        catalog.declare(self, ttl, family, depends_on)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        params = self.signature.params(args, kwargs)
        try:
            slot = self.target.slot(params)
        except NotCanonical:
            # A value its field cannot hold (the function will say so, or return nothing).
            stats.record("bypass", self.label)
            return self._compute(args, kwargs)
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
                if reply[1]:
                    logger.warning("Repaired a cache entry of %s (flags %s)", self.fn.__qualname__, reply[1])
                    stats.record("corrupt", self.label)
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
            self._served(params, slot, reply)
            return value

    def _served(self, params: dict[str, Any], slot: Slot, reply: list[Any]) -> None:
        """Hook run after a hit was served (``@refresh_ahead`` schedules refreshes here)."""

    def _fill_command(
        self, slot: Slot, token: str, generation: Any, payload: bytes, ttl: int, seconds: float
    ) -> tuple[Any, ...]:
        """Return the reply-less command storing a value computed in ``seconds`` on a miss."""
        return slot.fill(token, generation, payload, ttl)

    def _compute(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return materialise(self.fn(*args, **kwargs))

    def _load_and_fill(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], slot: Slot, token: str, generation: Any
    ) -> Any:
        stats.record("miss", self.label)
        store = get_store()
        used = _UsedDatabases()
        started = time.perf_counter()
        try:
            with used.watching():
                value = self._compute(args, kwargs)
        except BaseException:
            store.send_no_reply([slot.release(token, generation)])
            raise
        # Only the databases the function read decide whether its result may be stored.
        allowed = all(fill_allowed(alias) for alias in used.aliases)
        payload = self._encode(value) if allowed else None
        if payload is None:
            store.send_no_reply([slot.release(token, generation)])
            if not allowed:
                stats.record("bypass", self.label)
            return value
        seconds = time.perf_counter() - started
        store.send_no_reply(
            [self._fill_command(slot, token, generation, payload, ttl_ms(self.target.ttl), seconds)]
        )
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
        try:
            slot = self.target.slot(self.signature.with_defaults(params))
        except NotCanonical:
            return  # nothing can be cached under a value its field cannot hold
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
    using: str | None = None,
) -> Callable[[F], F]:
    """
    Cache the function's result under ``key`` (formatted from its arguments).

    ``family`` groups keys for O(1) invalidation; ``depends_on`` maps models to the
    attribute (or callable) that gives the family parameters of a changed row.
    ``using`` names the database the function reads (default ``"default"``): its
    results are keyed under that database's identity, and only writes to it
    invalidate them. The decorated function gains ``.invalidate(using=None, **params)``,
    ``.key(**params)`` and ``.cached`` (the state object).
    """
    validation.check_decorator(key, ttl, "cache_aside")

    def decorate(fn: F) -> F:
        return wrap(fn, CachedFunction(fn, key, ttl, family, depends_on, using))

    return decorate


def wrap(fn: F, cached: CachedFunction) -> F:
    """Return the function that calls ``cached``, with ``.invalidate``, ``.key`` and ``.cached``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return cached(*args, **kwargs)

    def invalidate(using: str = DEFAULT_DB_ALIAS, **params: Any) -> None:
        """Forget the result cached for ``params`` (after ``using`` commits, if in a transaction)."""
        cached.forget(params, using)

    def key_of(**params: Any) -> str:
        """Return the logical key of the result for ``params`` (defaults filled in)."""
        return cached.target.member(cached.signature.with_defaults(params))

    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    wrapper.key = key_of  # type: ignore[attr-defined]
    wrapper.cached = cached  # type: ignore[attr-defined]
    return cast("F", wrapper)


def refresh_ahead(
    key: str | None = None,
    *,
    ttl: int | None = UNSET,
    factor: float | None = None,
    beta: float | None = None,
    family: str | None = None,
    depends_on: Mapping[type[Model], Any] | None = None,
    using: str | None = None,
    name: str | None = None,
) -> Callable[[F], F]:
    """
    Cache the function's result like ``@cache_aside``, and refresh it in the background
    before it expires.

    A hit with less than ``factor * ttl`` left (default ``REFRESH_AHEAD["FACTOR"]``),
    or that XFetch picks when ``beta`` > 0 (default ``REFRESH_AHEAD["XFETCH_BETA"]``),
    returns the cached value and schedules one Celery task ``cachepatterns.refresh_key``
    for the key (deduplicated in Redis). A miss computes once (single flight).
    Arguments travel to the worker as JSON: they must be str, int, float, bool or None
    (anything else raises ``TypeError`` at the call). ``name`` is the name the worker
    finds the function by (default ``module.qualname``); import the function's module
    in every worker (from an ``AppConfig.ready()``).
    """
    from cachepatterns_app.patterns.refresh_ahead import decorate

    validation.check_decorator(key, ttl, "refresh_ahead")
    return decorate(
        key=key,
        ttl=ttl,
        factor=factor,
        beta=beta,
        family=family,
        depends_on=depends_on,
        using=using,
        name=name,
    )


def write_through(
    key: str | None = None, *, ttl: int | None = UNSET, family: str | None = None, using: str | None = None
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
        target = Target(fn, key, family, ttl, using)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            params = target.signature.params(args, kwargs)
            watch = _watch_family(target, params)
            if watch is None:
                result = materialise(fn(*args, **kwargs))
            else:
                # Every bump of this family that the writer's own writes schedule meanwhile
                # reports to the watch: the put then knows which generation is its own.
                with watch_bumps(watch):
                    result = materialise(fn(*args, **kwargs))
            _schedule_put(target, params, result, watch)
            return result

        return cast("F", wrapper)

    return decorate


def _watch_family(target: Target, params: dict[str, Any]) -> BumpWatch | None:
    """Read the family's generation before the writer computes (one round trip)."""
    if target.family is None:
        return None
    try:
        keys = target.family.keys(params, target.using or DEFAULT_DB_ALIAS)
    except (NotCanonical, TypeError):
        return None
    try:
        raw = get_store().execute("GET", keys.generation)
    except CacheUnavailable:
        raw = None
    before = raw.decode() if isinstance(raw, bytes) else (str(raw) if raw is not None else None)
    return BumpWatch(keys.generation, before)


def _schedule_put(target: Target, params: dict[str, Any], value: Any, watch: BumpWatch | None = None) -> None:
    label = target.label
    using = target.using or _db_for(value)
    try:
        # Keyed under the database the value came from: a row of another database
        # must never land where readers of this one look.
        slot = target.slot(params, using)
    except NotCanonical:
        return
    try:
        payload = dumps_result(value)
    except SerializationError as e:
        # Cannot store the new value: make sure the old one is not served either.
        logger.warning("write_through %s: %s; invalidating instead", slot.member, e)
        after_commit([(slot.forget(), label)], using)
        return
    ms = ttl_ms(target.ttl)
    member = slot if isinstance(slot, FamilySlot) else None
    if member is None or watch is None or watch.key != member.keys.generation:
        watch = None  # not a family, or keyed under another database than the one read

    def command() -> Any:
        if member is not None and watch is not None:
            expected = watch.expected()
            if expected is None and watch.results:
                return None  # another writer bumped between: our own bump invalidated it all
            return member.put_ordered(payload, ms, expected, bump=not watch.results)
        return slot.put(payload, ms, _version_of(value), companion_ttl_ms(ms))

    def put() -> None:
        todo = command()
        if todo is None:
            stats.record("stale_refused", label)
            return
        try:
            (reply,) = get_store().pipeline([todo])
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
