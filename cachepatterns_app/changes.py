"""
The one description of a write: which rows of which model changed, as they were
and as they are.

Every source of writes — model signals, the app's querysets, related managers,
many-to-many links, database-level cascades, explicit ``invalidate()`` — builds a
:class:`RowChange`; :func:`cachepatterns_app.writes.record` turns it into the Redis
work of every cache the change affects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Model

__all__ = ["DELETE", "LINK", "SAVE", "UPDATE", "RowChange"]

#: ``save()`` of one instance (``instance`` is set).
SAVE = "save"
#: Rows rewritten without their instances: ``update()``, ``bulk_update()``,
#: ``bulk_create()``, fixtures, ``SET_NULL`` children, ``invalidate()``.
UPDATE = "update"
#: Rows removed.
DELETE = "delete"
#: Many-to-many links of the rows changed: what depends on them changed, the rows did not.
LINK = "link"


@dataclass
class RowChange:
    """Rows ``pks`` of ``model`` in database ``using`` changed."""

    model: type[Model]
    using: str
    #: Primary keys as the database holds them.
    pks: Sequence[Any]
    kind: str = UPDATE
    #: The rows before the write (the fields dependencies read), for their families.
    old: Sequence[Model] = ()
    #: The rows after the write (instances or fresh reads), for their families.
    new: Sequence[Model] = ()
    #: The saved instance, for ``SAVE``.
    instance: Model | None = None
    update_fields: Any = None
    #: False: only drop cached copies (write-through would otherwise put fresh rows).
    refresh: bool = True
    #: False: the rows' own row caches are not told (the write-behind flush writes rows
    #: whose state in Redis it manages itself); what depends on them still is.
    own: bool = True
    #: Rows of multi-table descendants before the write, by model (their families).
    descendants_old: dict[type[Model], list[Model]] = field(default_factory=dict)
