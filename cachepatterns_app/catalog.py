"""
The decorated functions declared in this process, for checks and commands.

``@cache_aside`` records each function here when it is applied: its key and family
templates, its ``ttl``, the models of its ``depends_on``, and whether it was declared
while Django was still loading the apps (from a ``models`` module or an
``AppConfig.ready()``) or later. Only that tells whether every process has it:
signal handlers for ``depends_on`` exist only in processes that imported the
function's module, and a module imported lazily (by a URLconf, a view, a task)
is missing from a Celery worker or a management command that writes the models.

This is bookkeeping only: nothing here is read on the hit path.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.db.models import Model

if TYPE_CHECKING:
    from cachepatterns_app.decorators import CachedFunction

__all__ = ["Declared", "declare", "declared", "family_templates"]


@dataclass(frozen=True)
class Declared:
    """One decorated function, as declared."""

    module: str
    qualname: str
    key: str
    family: str | None
    ttl: Any
    depends_on: tuple[type[Model], ...]
    #: Declared after the app registry was ready: its module is imported lazily.
    late: bool

    @property
    def name(self) -> str:
        return f"{self.module}.{self.qualname}"


_lock = threading.Lock()
_declared: list[Declared] = []


def declare(
    cached: CachedFunction, ttl: Any, family: str | None, depends_on: Mapping[type[Model], Any] | None
) -> None:
    """Record the ``@cache_aside`` function behind ``cached``."""
    fn = cached.fn
    entry = Declared(
        module=str(getattr(fn, "__module__", "?")),
        qualname=str(getattr(fn, "__qualname__", repr(fn))),
        key=cached.label,
        family=family,
        ttl=ttl,
        depends_on=tuple(depends_on or ()),
        late=apps.ready,
    )
    with _lock:
        _declared.append(entry)


def declared() -> list[Declared]:
    """Return every function declared so far, in declaration order."""
    with _lock:
        return list(_declared)


def family_templates() -> set[str]:
    """Return the family templates of the functions declared so far."""
    return {entry.family for entry in declared() if entry.family}
