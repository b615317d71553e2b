"""
The collation the identity tests give their text columns: one that treats
different spellings as equal, as MySQL/MariaDB's default does.

On MySQL/MariaDB that is the database default (the suite creates it with
``utf8mb4_unicode_ci``: case, accents and trailing spaces are ignored). SQLite's
``NOCASE`` ignores ASCII case only. PostgreSQL's default collation is exact; a
nondeterministic one would need ``CREATE COLLATION``, so there the columns are
exact and the tests that need a loose column skip.
"""

from __future__ import annotations

import os

import dj_database_url

__all__ = ["EXACT_COLLATION", "LOOSE", "LOOSE_COLLATION"]

_engine = dj_database_url.parse(os.environ.get("DATABASE_URL") or "sqlite://:memory:")["ENGINE"]

LOOSE_COLLATION: str | None = "NOCASE" if _engine.endswith("sqlite3") else None
#: Whether text columns with LOOSE_COLLATION compare loosely on this database.
LOOSE = not _engine.endswith("postgresql")
#: A collation that compares byte for byte, trailing spaces too (what a write-behind
#: text key needs: check E017). MariaDB's; PostgreSQL's and SQLite's defaults are exact.
EXACT_COLLATION: str | None = "utf8mb4_nopad_bin" if _engine.endswith("mysql") else None
