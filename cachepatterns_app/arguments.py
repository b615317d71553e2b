"""
Turn a decorated function's arguments, and a changed row, into key parameters.

``Signature`` binds a call to the names its key and family templates use (by
hand for plain parameters: ``inspect.Signature.bind`` costs more than the rest
of a cache hit). ``dependency_params`` turns one ``depends_on`` entry (an
attribute name, a ``{param: attribute}`` dict, or a callable) into a function
from a row to the parameters of the families it belongs to.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db.models import Model

from cachepatterns_app import params as param_fields
from cachepatterns_app.exceptions import ConfigurationError
from cachepatterns_app.families import Family
from cachepatterns_app.keys import KeyTemplate

__all__ = ["Signature", "default_key", "dependency_params"]

_SELF = ("self", "cls")


class Signature:
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
        defaults = {name: value for name, value in self._defaults.items() if name != self.skip}
        return {**defaults, **params}

    def params(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Return the call's arguments by parameter name, defaults filled in, ``self`` left out."""
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


def default_key(fn: Callable[..., Any], names: list[str]) -> str:
    parts = [f"{fn.__module__}.{fn.__qualname__}"] + [f"{name}:{{{name}}}" for name in names]
    return ":".join(parts)


def dependency_params(
    fn: Callable[..., Any], model: type[Model], spec: Any, target: Family, key: KeyTemplate
) -> tuple[Callable[[Model], list[dict[str, Any]]], tuple[str, ...]]:
    """
    Return (row -> list of params, fields read) for one ``depends_on`` entry, and
    record which field each mapped parameter stands for (in ``target``'s and in
    ``key``'s templates), so that calls are keyed by the field's canonical value.
    """
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
            except FieldDoesNotExist as e:
                raise ConfigurationError(f"{where}: {model.__name__} has no field {attribute!r}.") from e
            if not getattr(field, "concrete", False) or field.many_to_many:
                raise ConfigurationError(
                    f"{where}: {model.__name__}.{attribute} is not a column of the row; map a "
                    "field (or a foreign key), or use a callable."
                )
            attrs[param] = str(getattr(field, "attname", None) or attribute)
            for template in (target.label, key.template):
                if param in KeyTemplate(template).fields:
                    param_fields.register(template, param, field, where)  # type: ignore[arg-type]
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
