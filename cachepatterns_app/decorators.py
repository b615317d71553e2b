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
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from django.db import DEFAULT_DB_ALIAS, connections, router
from django.db.models import Model

from cachepatterns_app import stats
from cachepatterns_app.conf import get_settings
from cachepatterns_app.exceptions import CacheUnavailable, ConfigurationError, SerializationError
from cachepatterns_app.families import Family
from cachepatterns_app.invalidation import Command, after_commit, has_pending_writes, queue_for_retry
from cachepatterns_app.keys import KeyTemplate, plain_keys
from cachepatterns_app.patterns.cache_aside import (
    LEASED,
    UNSET,
    await_turn,
    fill_allowed,
    lease_lifetime_ms,
    ttl_ms,
)
from cachepatterns_app.registry import Dependency, register_dependency, row_cache_for
from cachepatterns_app.results import decode_result, encode_result, materialise
from cachepatterns_app.serializers import get_serializer
from cachepatterns_app.store import SCRIPTS, get_store, new_token

__all__ = ["cache_aside", "write_through"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_SELF = ("self", "cls")


class _Signature:
    """Turn a call's arguments into key parameters, validated against the templates."""

    def __init__(self, fn: Callable[..., Any], templates: Iterable[KeyTemplate]) -> None:
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ConfigurationError(
                    f"{fn.__qualname__}: cannot build cache keys from *{p.name}; give the "
                    "function explicit parameters."
                )
        self.skip = params[0].name if params and params[0].name in _SELF else None
        self.names = [p.name for p in params if p.name != self.skip]
        self._all = [p.name for p in params]
        self._defaults = {p.name: p.default for p in params if p.default is not p.empty}
        # Plain (positional-or-keyword) parameters are bound by hand: Signature.bind
        # costs more than the rest of a cache hit's Python work.
        self._simple = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        for template in templates:
            unknown = set(template.fields) - set(self.names)
            if unknown:
                raise ConfigurationError(
                    f"{fn.__qualname__}: template {template.template!r} names "
                    f"{', '.join(sorted(unknown))}, which the function does not take."
                )

    def with_defaults(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``params`` completed with the function's default values."""
        defaults = {
            name: p.default
            for name, p in self.signature.parameters.items()
            if name != self.skip and p.default is not p.empty
        }
        return {**defaults, **params}

    def params(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._simple and len(args) <= len(self._all):
            out = dict(self._defaults)
            out.update(zip(self._all, args, strict=False))
            if kwargs and not (kwargs.keys() - self._all or kwargs.keys() & set(self._all[: len(args)])):
                out.update(kwargs)
                kwargs = {}
            if not kwargs and len(out) == len(self._all):
                if self.skip:
                    del out[self.skip]
                return out
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        if self.skip:
            arguments = {k: v for k, v in arguments.items() if k != self.skip}
        return dict(arguments)


def _default_key(fn: Callable[..., Any], names: list[str]) -> str:
    parts = [f"{fn.__module__}.{fn.__qualname__}"] + [f"{name}:{{{name}}}" for name in names]
    return ":".join(parts)


def _read_db_aliases() -> list[str]:
    return [c.alias for c in connections.all(initialized_only=True)] or [DEFAULT_DB_ALIAS]


class CachedFunction:
    """The state behind one ``@cache_aside`` function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        key: str | None,
        ttl: int | None,
        family: str | None,
        depends_on: Mapping[type[Model], Any] | None,
    ) -> None:
        self.fn = fn
        self.family = Family(family) if family else None
        probe = _Signature(fn, [])
        self.key = KeyTemplate(key or _default_key(fn, probe.names))
        templates = [self.key] + ([self.family.template] if self.family else [])
        self.signature = _Signature(fn, templates)
        missing = set(self.signature.names) - set(self.key.fields)
        if missing:
            raise ConfigurationError(
                f"{fn.__qualname__}: key {self.key.template!r} leaves out "
                f"{', '.join(sorted(missing))}; calls that differ only in those would share "
                "a cached result. Add them to the key."
            )
        self.label = self.key.template
        #: The label under which writes of ``depends_on`` rows are recorded.
        self.dependency_label = self.family.label if self.family else self.key.template
        self._ttl = ttl
        for model, spec in (depends_on or {}).items():
            target: Family | _KeyTarget = self.family if self.family else _KeyTarget(self.key)
            params, fields = _dependency(fn, model, spec, target)
            register_dependency(Dependency(model, target, params, fields))

    @property
    def ttl(self) -> int | None:
        return get_settings().DEFAULT_TTL if self._ttl is UNSET else self._ttl

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        params = self.signature.params(args, kwargs)
        member = self.key.format(params)
        if any(has_pending_writes(alias, self.dependency_label) for alias in _read_db_aliases()):
            # This transaction changed rows the result depends on: show it its writes.
            stats.record("bypass", self.label)
            return self._compute(args, kwargs)
        store = get_store()
        token = new_token()
        lease_ms = lease_lifetime_ms()
        if self.family is not None:
            fkeys = self.family.keys(params)
            gen_ttl = self._generation_ttl()

            def read() -> Any:
                reply = store.script(
                    "family_read", (fkeys.generation,), (fkeys.base, member, token, lease_ms, gen_ttl)
                )
                # family_read answers [state, generation, value?, pttl?]; normalise to read.lua's shape.
                return [reply[0], *reply[2:], reply[1]]

        else:
            pkeys = plain_keys(member)

            def read() -> Any:
                return store.script("read", (pkeys.value, pkeys.lease), (token, lease_ms))

        while True:
            try:
                reply = await_turn(read, self.label)
            except CacheUnavailable as e:
                stats.record("degraded", self.label)
                if not get_settings().DEGRADE_ON_FAILURE:
                    raise
                logger.debug("Cache unavailable for %s: %s", member, e)
                return self._compute(args, kwargs)
            if reply is None:
                stats.record("bypass", self.label)
                return self._compute(args, kwargs)
            if reply[0] == LEASED:
                return self._load_and_fill(args, kwargs, member, params, token, reply[-1])
            try:
                value = self._decode(reply[1])
            except SerializationError as e:
                logger.warning("Discarding unreadable cached result %s: %s", member, e)
                stats.record("corrupt", self.label)
                self._forget(params, now=True)
                continue
            stats.record("hit", self.label)
            return value

    def _compute(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return materialise(self.fn(*args, **kwargs))

    def _generation_ttl(self) -> int:
        ttl = self.ttl
        return 2 * int(ttl * 1000) + lease_lifetime_ms() if ttl else 0

    def _load_and_fill(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        member: str,
        params: dict[str, Any],
        token: str,
        generation: Any,
    ) -> Any:
        stats.record("miss", self.label)
        allowed = all(fill_allowed(alias) for alias in _read_db_aliases())
        try:
            value = self._compute(args, kwargs)
        except BaseException:
            self._release(params, member, token, generation)
            raise
        payload = self._encode(value) if allowed else None
        if payload is None:
            self._release(params, member, token, generation)
            if not allowed:
                stats.record("bypass", self.label)
            return value
        ttl = ttl_ms(self.ttl)
        if self.family is not None:
            fkeys = self.family.keys(params)
            command: tuple[Any, ...] = (
                "EVAL",
                SCRIPTS["family_fill"],
                1,
                fkeys.generation,
                fkeys.base,
                member,
                generation,
                token,
                payload,
                ttl,
                self._generation_ttl(),
            )
        else:
            pkeys = plain_keys(member)
            command = ("EVAL", SCRIPTS["fill"], 2, pkeys.value, pkeys.lease, token, payload, ttl)
        get_store().send_no_reply([command])
        stats.record("fill", self.label)
        # What a miss returns must equal what the hits after it return.
        return self._decode(payload) if _plain(value) else value

    def _release(self, params: dict[str, Any], member: str, token: str, generation: Any) -> None:
        if self.family is not None:
            fkeys = self.family.keys(params)
            command: tuple[Any, ...] = (
                "EVAL",
                SCRIPTS["family_release"],
                1,
                fkeys.generation,
                fkeys.base,
                member,
                generation,
                token,
            )
        else:
            command = ("EVAL", SCRIPTS["release"], 1, plain_keys(member).lease, token)
        get_store().send_no_reply([command])

    def _encode(self, value: Any) -> bytes | None:
        settings = get_settings()
        try:
            envelope = encode_result(value)
            envelope["d"] = _db_of(value)
            payload = get_serializer(settings.SERIALIZER).dumps(envelope)
        except SerializationError as e:
            logger.warning("Not caching the result of %s: %s", self.fn.__qualname__, e)
            stats.record("error", self.label)
            return None
        if settings.MAX_VALUE_BYTES and len(payload) > settings.MAX_VALUE_BYTES:
            logger.warning(
                "Not caching the result of %s: %d bytes is over MAX_VALUE_BYTES",
                self.fn.__qualname__,
                len(payload),
            )
            stats.record("too_large", self.label)
            return None
        return payload

    def _decode(self, payload: bytes) -> Any:
        envelope = get_serializer(get_settings().SERIALIZER).loads(payload)
        if not isinstance(envelope, dict):
            raise SerializationError("Cached result is not an envelope")
        return decode_result(envelope, envelope.get("d") or DEFAULT_DB_ALIAS)

    # -- invalidation -------------------------------------------------------------------

    def invalidation(self, params: Mapping[str, Any]) -> tuple[Command, str]:
        """Return the command that forgets the result cached for ``params``."""
        member = self.key.format(params)
        if self.family is not None:
            fkeys = self.family.keys(params)
            return ("SCRIPT", "family_forget", (fkeys.generation,), (fkeys.base, member)), self.label
        pkeys = plain_keys(member)
        return ("DEL", pkeys.value, pkeys.lease), self.label

    def _forget(self, params: Mapping[str, Any], *, now: bool = False) -> None:
        command, label = self.invalidation(params)
        if now:
            try:
                get_store().pipeline([command])
            except CacheUnavailable:
                queue_for_retry({command: label})
            return
        after_commit([(command, label)], DEFAULT_DB_ALIAS)


def _plain(value: Any) -> bool:
    return not isinstance(value, Model) and not (
        isinstance(value, list) and value and isinstance(value[0], Model)
    )


def _db_of(value: Any) -> str | None:
    first = value[0] if isinstance(value, list) and value else value
    return first._state.db if isinstance(first, Model) else None


class _KeyTarget:
    """A single key (no family) as the target of ``depends_on``."""

    def __init__(self, key: KeyTemplate) -> None:
        self.template = key
        self.label = key.template

    @property
    def fields(self) -> tuple[str, ...]:
        return self.template.fields

    def bump(self, params: Mapping[str, Any]) -> tuple[Command, str]:
        keys = plain_keys(self.template.format(params))
        return ("DEL", keys.value, keys.lease), self.label


def _dependency(
    fn: Callable[..., Any], model: type[Model], spec: Any, target: Family | _KeyTarget
) -> tuple[Callable[[Model], list[dict[str, Any]]], tuple[str, ...]]:
    """Return (row -> list of params, fields read) for one ``depends_on`` entry."""
    where = f"{fn.__qualname__}: depends_on[{model.__name__}]"
    if not (isinstance(model, type) and issubclass(model, Model)):
        raise ConfigurationError(f"{fn.__qualname__}: depends_on keys must be model classes, not {model!r}.")
    if isinstance(spec, str):
        if len(target.fields) != 1:
            raise ConfigurationError(
                f"{where} = {spec!r} names one attribute, but {target.label!r} has "
                f"{len(target.fields)} parameters; use a dict {{param: attribute}} or a callable."
            )
        spec = {target.fields[0]: spec}
    if isinstance(spec, Mapping):
        attrs: dict[str, str] = {}
        for param, attribute in spec.items():
            if param not in target.fields:
                raise ConfigurationError(f"{where}: {target.label!r} has no parameter {param!r}.")
            try:
                field = model._meta.get_field(attribute)
            except Exception as e:
                raise ConfigurationError(f"{where}: {model.__name__} has no field {attribute!r}.") from e
            attrs[param] = str(getattr(field, "attname", None) or attribute)
        missing = set(target.fields) - set(attrs)
        if missing:
            raise ConfigurationError(f"{where}: no attribute given for {', '.join(sorted(missing))}.")

        def from_attributes(row: Model) -> list[dict[str, Any]]:
            return [{param: getattr(row, attname) for param, attname in attrs.items()}]

        return from_attributes, tuple(attrs.values())
    if callable(spec):

        def from_callable(row: Model) -> list[dict[str, Any]]:
            out = spec(row)
            if out is None:
                return []
            if isinstance(out, Mapping):
                return [dict(out)]
            return [dict(item) for item in out]

        return from_callable, ()
    raise ConfigurationError(
        f"{where} must be an attribute name, a dict {{param: attribute}} or a callable "
        f"row -> params, not {spec!r}."
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
    The decorated function gains ``.invalidate(**params)``, ``.key(**params)`` and
    ``.cached`` (the state object).
    """

    def decorate(fn: F) -> F:
        cached = CachedFunction(fn, key, ttl, family, depends_on)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return cached(*args, **kwargs)

        def invalidate(**params: Any) -> None:
            """Forget the result cached for ``params`` (after commit, inside a transaction)."""
            cached._forget(cached.signature.with_defaults(params))

        def key_of(**params: Any) -> str:
            """Return the logical key of the result for ``params`` (defaults filled in)."""
            return cached.key.format(cached.signature.with_defaults(params))

        wrapper.invalidate = invalidate  # type: ignore[attr-defined]
        wrapper.key = key_of  # type: ignore[attr-defined]
        wrapper.cached = cached  # type: ignore[attr-defined]
        return cast("F", wrapper)

    return decorate


def write_through(key: str | None = None, *, ttl: int | None = UNSET) -> Callable[[F], F]:
    """
    Store the writer's return value under ``key`` once its transaction commits.

    Readers decorated with ``@cache_aside(key=<the same template>)`` then hit the
    new value. If the value is a model instance with a write-through version (or a
    dict with an integer ``"version"``), the put never replaces a newer version;
    otherwise concurrent writers are not ordered (last to reach Redis wins).
    """

    def decorate(fn: F) -> F:
        signature = _Signature(fn, [])
        template = KeyTemplate(key or _default_key(fn, signature.names))
        _Signature(fn, [template])

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = materialise(fn(*args, **kwargs))
            params = signature.params(args, kwargs)
            _schedule_put(template, params, result, ttl)
            return result

        return cast("F", wrapper)

    return decorate


def _schedule_put(template: KeyTemplate, params: dict[str, Any], value: Any, ttl: int | None) -> None:
    member = template.format(params)
    keys = plain_keys(member)
    label = template.template
    settings = get_settings()
    lifetime = settings.DEFAULT_TTL if ttl is UNSET else ttl
    try:
        envelope = encode_result(value)
        envelope["d"] = _db_of(value)
        payload = get_serializer(settings.SERIALIZER).dumps(envelope)
    except SerializationError as e:
        # Cannot store the new value: make sure the old one is not served either.
        logger.warning("write_through %s: %s; invalidating instead", member, e)
        after_commit([(("DEL", keys.value, keys.lease), label)], _db_for(value))
        return
    version = _version_of(value)
    ms = ttl_ms(lifetime)
    if version is None:
        command: Command = ("SCRIPT", "put_plain", (keys.value, keys.lease), (payload, ms))
    else:
        ver_ttl = 2 * ms + lease_lifetime_ms() if ms else 0
        command = (
            "SCRIPT",
            "put_versioned",
            (keys.value, keys.lease, keys.version),
            (version, payload, ms, ver_ttl, ""),
        )

    def put() -> None:
        try:
            (reply,) = get_store().pipeline([command])
        except CacheUnavailable as e:
            logger.error("write_through put of %s failed (%s); invalidating on recovery", member, e)
            queue_for_retry({("DEL", keys.value, keys.lease): label})
            return
        stats.record("put" if reply == 1 else "stale_refused", label)

    after_commit([], _db_for(value), put)


def _db_for(value: Any) -> str:
    first = value[0] if isinstance(value, list) and value else value
    if isinstance(first, Model):
        return first._state.db or router.db_for_write(type(first))
    return DEFAULT_DB_ALIAS


def _version_of(value: Any) -> int | None:
    if isinstance(value, Model):
        cache = row_cache_for(type(value))
        name = getattr(cache, "version_name", None)
        if name:
            version = getattr(value, name, None)
            return version if isinstance(version, int) else None
    if isinstance(value, dict) and isinstance(value.get("version"), int):
        return int(value["version"])
    return None
