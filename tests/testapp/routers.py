"""
Where the test app's tables are created: everywhere, except that a table whose
column names a MariaDB collation (``EXACT_COLLATION``) is not created on an alias of
another vendor (the suite's second database, ``other``, is always SQLite).
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from tests.testapp.collations import EXACT_COLLATION

__all__ = ["CollationRouter"]

#: Models with a column in EXACT_COLLATION.
EXACT_MODELS = frozenset({"tally"})


class CollationRouter:
    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        if app_label == "testapp" and model_name in EXACT_MODELS and EXACT_COLLATION:
            return connections[db].vendor == "mysql"
        return None
