"""
``@refresh_ahead`` functions: ``@cache_aside`` whose due hits schedule a refresh.

:class:`RefreshingFunction` is a :class:`~cachepatterns_app.decorators.CachedFunction`
(same keys, families, ``depends_on`` wiring, single flight on a miss) whose target
reads with ``ra_read.lua`` and stores each value's compute time beside it. Every
decorated function is registered by name, so that the worker's
``cachepatterns.refresh_key`` task finds it: the worker must import its module
(from an ``AppConfig.ready()``), exactly as ``depends_on`` needs anyway.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from django.db import DEFAULT_DB_ALIAS
from django.db.models import Model

from cachepatterns_app import stats
from cachepatterns_app.decorators import CachedFunction, Target, _UsedDatabases, wrap
from cachepatterns_app.exceptions import ConfigurationError
from cachepatterns_app.identity import NotCanonical, database_identity
from cachepatterns_app.leases import UNSET, companion_ttl_ms, fill_allowed, ttl_ms
from cachepatterns_app.patterns.refresh_ahead import worker
from cachepatterns_app.patterns.refresh_ahead.policy import Policy, check_arguments
from cachepatterns_app.patterns.refresh_ahead.slots import (
    DUE,
    PENDING,
    RefreshFamilySlot,
    RefreshPlainSlot,
    sampled_touch,
    text,
)
from cachepatterns_app.slots import Slot

__all__ = ["RefreshTarget", "RefreshingFunction", "decorate", "refresh_function", "registered"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
RefreshSlot = RefreshPlainSlot | RefreshFamilySlot

_lock = threading.Lock()
_registry: dict[str, RefreshingFunction] = {}


def registered(name: str) -> RefreshingFunction | None:
    """Return the ``@refresh_ahead`` function registered under ``name`` in this process."""
    return _registry.get(name)


class RefreshTarget(Target):
    """A :class:`Target` whose slots read with the refresh-ahead scripts."""

    policy: Policy
    name: str
    where: str

    def slot(self, params: dict[str, Any], using: str | None = None) -> Slot:
        # Every call passes here first: a non-JSON argument fails at the call, never
        # later in a worker.
        check_arguments(params, self.where)
        member = self.member(params)
        alias = using or self.using or DEFAULT_DB_ALIAS
        db = database_identity(alias)
        ttl = self.ttl
        reading = self.policy.reading(ttl)
        touch = sampled_touch(db, ["f", self.name, params])
        if self.family is None:
            return RefreshPlainSlot(db, member, reading, touch, alias)
        generation_ttl = companion_ttl_ms(int(ttl * 1000) if ttl else 0)
        return RefreshFamilySlot(self.family, params, member, generation_ttl, alias, reading, touch)


def _check_function(fn: Callable[..., Any], where: str) -> None:
    parameters = inspect.signature(fn).parameters.values()
    # A default travels to the worker like any argument: refuse it here, at decoration.
    check_arguments({p.name: p.default for p in parameters if p.default is not p.empty}, where)
    for parameter in parameters:
        if parameter.name in ("self", "cls") and parameter.kind is parameter.POSITIONAL_OR_KEYWORD:
            raise ConfigurationError(
                f"{where}: methods cannot be refreshed in the background (a worker has no "
                f"{parameter.name!r} to call them on). Decorate a module-level function that takes ids."
            )
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise ConfigurationError(
                f"{where}: parameter {parameter.name!r} is positional-only; a worker calls the "
                "function with keyword arguments. Drop the '/'."
            )


class RefreshingFunction(CachedFunction):
    """The state behind one ``@refresh_ahead`` function."""

    target_class = RefreshTarget

    def __init__(
        self,
        fn: Callable[..., Any],
        key: str | None,
        ttl: Any,
        family: str | None,
        depends_on: Mapping[type[Model], Any] | None,
        using: str | None,
        factor: Any,
        beta: Any,
        name: str | None,
    ) -> None:
        where = f"@refresh_ahead {fn.__qualname__}"
        _check_function(fn, where)
        if ttl is None:
            raise ConfigurationError(
                f"{where}: ttl=None never expires, so there is nothing to refresh ahead of; give "
                "ttl= in seconds, or use @cache_aside."
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"{where}: name must be a non-empty string, not {name!r}.")
        policy = Policy(factor, beta, where)
        super().__init__(fn, key, ttl, family, depends_on, using)
        self.policy = policy
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        target = self.refresh_target
        target.policy, target.name, target.where = policy, self.name, where
        with _lock:
            previous = _registry.get(self.name)
            if previous is not None and previous.label != self.label:
                logger.warning(
                    "@refresh_ahead name %r now names %s, not %s", self.name, self.label, previous.label
                )
            _registry[self.name] = self

    @property
    def refresh_target(self) -> RefreshTarget:
        return cast("RefreshTarget", self.target)

    # -- the read (in the caller's process) ------------------------------------------------

    def _served(self, params: dict[str, Any], slot: Slot, reply: list[Any]) -> None:
        state = reply[0]
        if state == DUE:
            stats.record("stale_served", self.label)
            refresh = cast("RefreshSlot", slot)
            kwargs = {
                "name": self.name,
                "params": params,
                "using": refresh.alias,
                "token": refresh.refresh_token,
                "generation": text(reply[-1]) or None,
            }
            worker.schedule("refresh_key", kwargs, self.label, refresh.alias)
        elif state == PENDING:
            stats.record("stale_served", self.label)

    def _fill_command(
        self, slot: Slot, token: str, generation: Any, payload: bytes, ttl: int, seconds: float
    ) -> tuple[Any, ...]:
        return cast("RefreshSlot", slot).fill_timed(token, generation, payload, ttl, int(seconds * 1000))

    # -- the refresh (in a worker) ---------------------------------------------------------

    def refresh(self, params: dict[str, Any], using: str, token: str, generation: str | None) -> str:
        """Recompute the result for ``params`` and store it if nothing wrote the key since the read."""
        unknown = set(params) - set(self.signature.names)
        try:
            if unknown:
                raise TypeError(f"unknown parameters {', '.join(sorted(unknown))}")
            slot = cast("RefreshSlot", self.refresh_target.slot(self.signature.with_defaults(params), using))
        except (NotCanonical, TypeError, ValueError) as e:
            logger.error("cachepatterns.refresh_key for %s: unusable arguments %r (%s)", self.name, params, e)
            stats.record("refresh_failed", self.label)
            return worker.FAILED
        gen = generation or ""
        if isinstance(slot, RefreshFamilySlot) and not gen:
            logger.error("cachepatterns.refresh_key for %s: a family member needs its generation", self.name)
            stats.record("refresh_failed", self.label)
            return worker.FAILED
        ttl = self.target.ttl
        job = worker.Job(
            label=self.label,
            keys=slot.script_keys(gen),
            generation=gen,
            token=token,
            ttl_ms=ttl_ms(ttl),
            generation_ttl_ms=slot.generation_ttl,
            window_ms=self.policy.window_ms(ttl),
            load=lambda: self._payload(params),
        )
        return worker.run(job)

    def _payload(self, params: dict[str, Any]) -> bytes | None:
        used = _UsedDatabases()
        with used.watching():
            value = self._compute((), dict(params))
        if not all(fill_allowed(alias) for alias in used.aliases):
            return None
        return self._encode(value)


def refresh_function(
    name: str, params: Any, using: str = DEFAULT_DB_ALIAS, token: str = "", generation: str | None = None
) -> str:
    """The body of ``cachepatterns.refresh_key``: find the function by name and refresh it."""
    function = registered(name) if isinstance(name, str) else None
    if function is None:
        logger.error(
            "cachepatterns.refresh_key: no @refresh_ahead function named %r in this worker. Import "
            "its module in every worker (from an AppConfig.ready()); the key is refreshed on its "
            "next miss meanwhile.",
            name,
        )
        stats.record("refresh_failed", str(name))
        return worker.FAILED
    if not isinstance(params, dict) or not isinstance(token, str) or not token.startswith("r:"):
        logger.error("cachepatterns.refresh_key for %s: malformed message %r", name, (params, token))
        stats.record("refresh_failed", function.label)
        return worker.FAILED
    return function.refresh(params, using, token, generation)


def decorate(
    *,
    key: str | None,
    ttl: Any = UNSET,
    factor: Any = None,
    beta: Any = None,
    family: str | None = None,
    depends_on: Mapping[type[Model], Any] | None = None,
    using: str | None = None,
    name: str | None = None,
) -> Callable[[F], F]:
    """Return the ``@refresh_ahead(...)`` decorator (``decorators.refresh_ahead`` validated the key)."""

    def apply(fn: F) -> F:
        return wrap(fn, RefreshingFunction(fn, key, ttl, family, depends_on, using, factor, beta, name))

    return apply
