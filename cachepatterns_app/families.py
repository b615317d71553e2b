"""
Families: groups of cached results invalidated together in O(1).

A family such as ``"user:{user_id}:posts"`` has a generation counter in Redis.
Every member (each cached page of that user's posts) is stored under a key that
embeds the generation, and it is read together with the generation in one Lua
call. Invalidating the family increments the counter — one command, whatever the
number of members — and the old members become unreachable and expire by TTL.

Family parameters that stand for a model field (``depends_on``) are keyed by the
field's canonical value (see ``params``), so ``"07"`` and ``7`` name one family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cachepatterns_app import params as param_fields
from cachepatterns_app.identity import database_identity
from cachepatterns_app.keys import FamilyKeys, KeyTemplate, family_keys

__all__ = ["Command", "Family"]

Command = tuple[Any, ...]


class Family:
    """A family template; formatted with parameters it names one family."""

    def __init__(self, template: str) -> None:
        self.template = KeyTemplate(template)
        self.label = template

    @property
    def fields(self) -> tuple[str, ...]:
        """Return the parameter names the template needs."""
        return self.template.fields

    def name(self, params: Mapping[str, Any], using: str) -> str:
        """Return the formatted family name (``NotCanonical`` if a value cannot be keyed)."""
        return self.template.format(params, param_fields.converters(self.label, using))

    def keys(self, params: Mapping[str, Any], using: str = "default") -> FamilyKeys:
        """Return the keys of the family named by ``params`` for database ``using``."""
        return family_keys(database_identity(using), self.name(params, using))

    def bump(self, params: Mapping[str, Any], using: str = "default") -> tuple[Command, str]:
        """Return the command (and stats label) that invalidates the family ``params`` names."""
        return ("SCRIPT", "family_bump", (self.keys(params, using).generation,), ()), self.label

    def __repr__(self) -> str:
        return f"Family({self.label!r})"
