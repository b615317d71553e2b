"""
The flush's statements on MySQL/MariaDB turn the common parameter types into literals
itself (``write_behind.sql.execute``): the query the server gets must be byte for byte
the one mysqlclient builds, and read back the same values. Real MariaDB.
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import pytest
from django.db import connection

from cachepatterns_app.patterns.write_behind.sql import execute

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "mysql", reason="the inlined literals are MySQL/MariaDB's"),
]

VALUES: list[Any] = [
    "plain",
    "",
    'it\'s "quoted"',
    "back\\slash",
    "nul\x00byte",
    "line\nbreak\r\ttab\x1a",
    "100% sure %s %(name)s",
    "emoji 🐘 and é",
    0,
    -7,
    2**62,
    None,
    True,
    False,
    1.5,
    decimal.Decimal("12.30"),
    "2026-12-04 01:02:03.123456",
]


def _run(run: Any) -> tuple[bytes, tuple[Any, ...]]:
    with connection.cursor() as cursor:
        run(cursor)
        executed = cursor.cursor._executed  # what mysqlclient sent
        return bytes(executed), tuple(cursor.fetchone())


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_an_inlined_literal_is_the_drivers_own(value):
    sql = "SELECT %s, %s"
    params = [value, "after"]
    ours = _run(lambda cursor: execute(cursor, connection, sql, params))
    theirs = _run(lambda cursor: cursor.execute(sql, params))
    assert ours == theirs


def test_bytes_keep_the_drivers_path():
    sql = "SELECT %s"
    ours = _run(lambda cursor: execute(cursor, connection, sql, [b"raw\x00bytes"]))
    theirs = _run(lambda cursor: cursor.execute(sql, [b"raw\x00bytes"]))
    assert ours == theirs


def test_a_datetime_goes_through_the_drivers_literal():
    moment = datetime.datetime(2026, 12, 4, 1, 2, 3, 123456)
    sql = "SELECT %s"
    assert _run(lambda cursor: execute(cursor, connection, sql, [moment])) == _run(
        lambda cursor: cursor.execute(sql, [moment])
    )
