"""A project-style custom field: what it stores differs from what was assigned."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import deletion

__all__ = ["DB_CASCADE", "DB_SET_NULL", "HAS_DB_ON_DELETE", "LowerCaseField"]


class LowerCaseField(models.CharField):  # type: ignore[type-arg]
    """Stores its value lower-cased (the in-memory value keeps its case until read back)."""

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        return value.lower() if isinstance(value, str) else value


#: Django 6.1's database-level on_delete; older versions fall back to the Python-level ones
#: (the tests that need the database-level behaviour skip there).
HAS_DB_ON_DELETE = hasattr(deletion, "DB_CASCADE")
DB_CASCADE: Any = getattr(deletion, "DB_CASCADE", models.CASCADE)
DB_SET_NULL: Any = getattr(deletion, "DB_SET_NULL", models.SET_NULL)
