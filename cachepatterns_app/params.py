"""
Canonical key parameters: which model field a decorator's parameter stands for.

A ``depends_on`` entry maps a family parameter to a field of the dependent model
(``{Post: "author_id"}``). The row side of an invalidation then holds the value
as the database returned it (``7``); a caller may pass ``"07"``, an upper-case
UUID, or an email in another case. Both sides must name the same family, so both
go through the field: :func:`exact` gives the value as the database returns it
(used for member keys: distinct arguments never share a result), :func:`grouped`
also folds text that the column's collation compares loosely (used for family
keys: folding two values together costs an extra invalidation, never a wrong
answer).

The mapping is kept per template text, so a ``@write_through`` writer naming the
same key and family templates as a ``@cache_aside`` reader formats them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import Field, Model

from cachepatterns_app.exceptions import ConfigurationError
from cachepatterns_app.identity import canonical, fold, text_is_exact, value_field

__all__ = ["converters", "exact", "field_of", "grouped", "register"]

_fields: dict[str, dict[str, Field[Any, Any]]] = {}
_converters: dict[tuple[str, str | None], dict[str, Callable[[Any], Any]]] = {}


def register(template: str, param: str, field: Field[Any, Any], where: str) -> None:
    """Record that ``param`` of ``template`` holds values of ``field``."""
    known = _fields.setdefault(template, {})
    previous = known.get(param)
    if previous is not None and type(value_field(previous)) is not type(value_field(field)):
        raise ConfigurationError(
            f"{where}: parameter {param!r} of {template!r} already stands for "
            f"{previous.model.__name__}.{previous.name} ({type(value_field(previous)).__name__}), "
            f"not {field.model.__name__}.{field.name} ({type(value_field(field)).__name__}). "
            "Map it to fields of one type, or use a callable in depends_on."
        )
    known.setdefault(param, field)
    _converters.clear()


def converters(template: str, grouping_for: str | None = None) -> dict[str, Callable[[Any], Any]] | None:
    """
    Return ``{param: convert}`` for the mapped parameters of ``template`` (None if it
    has none): :func:`exact` for a key, :func:`grouped` on database ``grouping_for``
    for a family. Built once per template and database, not per call.
    """
    memo = (template, grouping_for)
    known = _converters.get(memo)
    if known is None:
        fields = _fields.get(template, {})
        known = {
            param: (_exact_of(field) if grouping_for is None else _grouped_of(field, grouping_for))
            for param, field in fields.items()
        }
        _converters[memo] = known
    return known or None


def _exact_of(field: Field[Any, Any]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        return exact(field, value)

    return convert


def _grouped_of(field: Field[Any, Any], using: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        return grouped(field, value, using)

    return convert


def field_of(template: str, param: str) -> Field[Any, Any] | None:
    """Return the field ``param`` of ``template`` stands for (None: a plain parameter)."""
    fields = _fields.get(template)
    return fields.get(param) if fields else None


def fields_of(template: str) -> dict[str, Field[Any, Any]]:
    """Return every mapped parameter of ``template``."""
    return _fields.get(template, {})


def exact(field: Field[Any, Any], value: Any) -> Any:
    """Return ``value`` as the database returns it for ``field`` (``NotCanonical`` if unknowable)."""
    if isinstance(value, Model):
        value = value.pk
    return canonical(field, value)


def grouped(field: Field[Any, Any], value: Any, using: str) -> Any:
    """Return the value a family of ``field`` is keyed by on database ``using``."""
    typed = exact(field, value)
    if isinstance(typed, str) and not text_is_exact(field, using):
        return fold(typed)
    return typed
