"""
Helpers for the concurrency and fault tests: threads with their own database
connection, SELECT counting, waiting for fire-and-forget fills, a private
``redis-server`` that a test may pause (SIGSTOP) or kill, and a count of what the
app sent to it.

No test may depend on how fast the machine is. "Fast" is proven causally — no
command was written to Redis, no reply was awaited, no connection was opened
(:func:`traffic_to`), the breaker's state — and waiting loops use deadlines far
beyond what an idle machine needs (:data:`PATIENCE`), so a busy machine only makes
them slower, never wrong.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis as redis_py
from django.conf import settings
from django.db import connections
from django.db.models import Model
from django.test import override_settings

from cachepatterns_app import keys as _keys
from cachepatterns_app.identity import database_identity
from cachepatterns_app.keys import FamilyKeys, PlainKeys, RowKeys, model_label
from cachepatterns_app.store import get_store

__all__ = [
    "PATIENCE",
    "PrivateRedis",
    "SelectCounter",
    "Traffic",
    "Worker",
    "breaker_cooled_down",
    "cachepatterns",
    "family_keys",
    "keys_of",
    "plain_keys",
    "readme_block",
    "row_keys",
    "settle",
    "traffic_to",
    "unique_key",
    "wait_until",
]

#: How long a polling loop waits for something that happens at once on an idle
#: machine: a deadline for giving up, never a measure of speed.
PATIENCE = 30.0

#: The client name of a :class:`PrivateRedis`'s own observer client: its traffic is
#: the test's, not the app's, so :func:`traffic_to` leaves it out.
OBSERVER = "cp-test-observer"

SQLITE = settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
MYSQL = settings.DATABASES["default"]["ENGINE"].endswith("mysql")


def readme_block(first_line: str) -> str:
    """Return the README's fenced Python block whose first line is ``first_line``."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    found = [block for block in blocks if block.startswith(first_line + "\n")]
    assert len(found) == 1, f"README.md has {len(found)} python blocks starting {first_line!r}"
    return str(found[0])


def cachepatterns(**overrides: Any) -> override_settings:
    """Return ``override_settings`` for the suite's ``CACHEPATTERNS`` with ``overrides``."""
    return override_settings(CACHEPATTERNS={**settings.CACHEPATTERNS, **overrides})


def keys_of(model: type[Model], pk: Any, using: str = "default") -> RowKeys:
    """Return the Redis keys of row ``pk`` of ``model`` in database ``using``."""
    return _keys.row_keys(model_label(model), database_identity(using), pk)


def row_keys(label: str, pk: Any, using: str = "default") -> RowKeys:
    """``keys.row_keys`` for database ``using`` (the suite's default database)."""
    return _keys.row_keys(label, database_identity(using), pk)


def unique_key(label: str, field: str, value: Any, using: str = "default") -> str:
    """``keys.unique_key`` for database ``using``."""
    return _keys.unique_key(label, database_identity(using), field, value)


def plain_keys(key: str, using: str = "default") -> PlainKeys:
    """``keys.plain_keys`` for database ``using``."""
    return _keys.plain_keys(database_identity(using), key)


def family_keys(family: str, using: str = "default") -> FamilyKeys:
    """``keys.family_keys`` for database ``using``."""
    return _keys.family_keys(database_identity(using), family)


def flush_until_drained(cache: Any, using: str = "default") -> list[Any]:
    """
    Flush ``cache``'s write-behind queue until it is empty, with a short RECLAIM_IDLE:
    entries a fault left pending (delivered, never acknowledged) are reclaimed once they
    have been idle that long. Return each flush's result; the caller asserts the queue
    is empty (``wait_until`` gives up after PATIENCE).
    """
    from cachepatterns_app.patterns.write_behind.flush import flush_model

    results: list[Any] = []
    wb = {**settings.CACHEPATTERNS.get("WRITE_BEHIND", {}), "RECLAIM_IDLE": 0.2}
    with cachepatterns(WRITE_BEHIND=wb):

        def drained() -> bool:
            results.append(flush_model(cache, using))
            return cache.queue(using).length() == 0

        wait_until(drained)
    return results


def wait_until(predicate: Callable[[], Any], timeout: float = PATIENCE, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until it is truthy (return it) or ``timeout`` passes (return it anyway)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def breaker_cooled_down() -> None:
    """Wait until the open circuit breaker's cooldown is over (its next call is a trial)."""
    breaker = get_store().breaker
    assert breaker.state == "open"
    assert wait_until(lambda: breaker._clock() - breaker._opened_at >= breaker.cooldown)


def settle() -> None:
    """
    Wait until every fire-and-forget command (fills sent with CLIENT REPLY SKIP)
    has been executed by Redis.

    Such commands go out over pooled connections and nobody reads a reply. Redis
    executes the commands of one connection in order, so a PING answered on every
    idle pooled connection proves that everything sent before it has run. Call it
    only when no other thread uses the cache.
    """
    store = get_store()
    if store.is_cluster:
        return  # no CLIENT REPLY SKIP on a cluster: every command was answered already
    pool = store.client.connection_pool
    with pool._lock:
        idle = list(pool._available_connections)
    for connection in idle:
        if connection._sock is None:
            continue
        connection.send_command("PING")
        assert connection.read_response() in (b"PONG", "PONG")


class SelectCounter:
    """An execute wrapper counting SELECTs on one table, safe to share between threads."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip().upper().startswith("SELECT") and self.table in sql:
            with self._lock:
                self.count += 1
        return execute(sql, params, many, context)


def waits_for_a_lock(observer: Any, session: int) -> bool:
    """Whether session ``session`` waits for a lock (MariaDB/MySQL, PostgreSQL), asked via ``observer``."""
    with observer.cursor() as cursor:
        if observer.vendor == "postgresql":
            cursor.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", [session]
            )
            return cursor.fetchone() is not None
        cursor.execute("SHOW ENGINE INNODB STATUS")
        status = cursor.fetchone()[2]
    return any(
        f"thread id {session}," in block and "LOCK WAIT" in block
        for block in status.split("---TRANSACTION ")[1:]
    )


def session_id(conn: Any) -> int:
    """Return ``conn``'s session id in the database server (what :func:`waits_for_a_lock` takes)."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()" if conn.vendor == "postgresql" else "SELECT CONNECTION_ID()")
        return int(cursor.fetchone()[0])


class Worker(threading.Thread):
    """
    Run ``target`` in a thread with its own database connection, closed at the end.

    :meth:`result` re-raises whatever ``target`` raised, so assertions made in the
    thread fail the test.
    """

    def __init__(self, target: Callable[[], Any], name: str = "worker") -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self._target_fn()
        except BaseException as e:  # handed to the test thread by result()
            self.error = e
        finally:
            connections.close_all()

    def result(self, timeout: float = 30.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not finish within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of this test's own, on a free loopback port (``options``: more server options)."""

    def __init__(self, *options: str) -> None:
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="cp-redis-")
        #: Extra server options, e.g. ("--appendonly", "yes", "--appendfsync", "everysec").
        self.options = options or ("--appendonly", "no")
        self.paused = False
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis_py.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=PATIENCE, client_name=OBSERVER
        )
        self.start()

    def start(self) -> None:
        """Start the server (again: same port, same directory, so what it persisted is back)."""
        from demo_project.embedded import redis_server_binary

        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                self.dir,
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + PATIENCE
        while True:
            with contextlib.suppress(redis_py.ConnectionError, redis_py.exceptions.BusyLoadingError):
                if self.client.ping():
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.02)

    def crash(self) -> None:
        """Kill the server with SIGKILL (no shutdown, no last fsync), keeping its files."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def caches(self, socket_timeout: float = 0.5) -> dict[str, Any]:
        """Return a ``CACHES`` setting pointing the default cache at this server."""
        return {
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": self.url,
                "OPTIONS": {"SOCKET_TIMEOUT": socket_timeout, "SOCKET_CONNECT_TIMEOUT": socket_timeout},
            }
        }

    def pause(self) -> None:
        """Freeze the server (it accepts TCP data but answers nothing): a hung Redis."""
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def client_pause(self, mode: str, ms: int = 3_600_000) -> None:
        """
        Hold the server's clients with ``CLIENT PAUSE ms mode`` (``WRITE`` or ``ALL``; by
        default for an hour: the test ends it). ``CLIENT UNPAUSE`` ends a WRITE pause; an
        ALL pause holds ``CLIENT UNPAUSE`` too (Redis 7.0), so end it with a restart.
        """
        self.client.execute_command("CLIENT", "PAUSE", ms, mode)

    def client_unpause(self) -> None:
        self.client.execute_command("CLIENT", "UNPAUSE")

    def command_calls(self) -> dict[str, int]:
        """Return ``{command: calls}`` from ``INFO commandstats``."""
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def stop(self) -> None:
        """Kill the server (also when paused) and wait for it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)
        self.client.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Traffic:
    """What the app did towards one Redis server while :func:`traffic_to` counted."""

    def __init__(self) -> None:
        self.connects = 0  # sockets opened
        self.sends = 0  # writes of one or more commands
        self.replies = 0  # replies awaited (each can block up to the socket timeout)
        self._lock = threading.Lock()

    def add(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    @property
    def silent(self) -> bool:
        """Return whether nothing at all reached (or was awaited from) the server."""
        return self.connects == self.sends == self.replies == 0

    def __repr__(self) -> str:
        return f"Traffic(connects={self.connects}, sends={self.sends}, replies={self.replies})"


@contextlib.contextmanager
def traffic_to(port: int) -> Iterator[Traffic]:
    """
    Count the connections, writes and awaited replies of every redis-py connection
    to 127.0.0.1:``port`` in this process (all threads), except the observer client
    of a :class:`PrivateRedis`.

    A call that waits on a hung Redis can only do so in a connect or an awaited
    reply, each bounded by the socket timeout; so ``silent`` proves a call did not
    wait for Redis at all, and ``replies == 1`` that it paid the timeout once —
    however slow the machine.
    """
    from redis import connection as redis_connection

    traffic = Traffic()
    base = redis_connection.AbstractConnection
    tcp = redis_connection.Connection
    originals = (base.send_packed_command, base.read_response, tcp._connect)

    def counted(conn: Any) -> bool:
        return getattr(conn, "port", None) == port and getattr(conn, "client_name", None) != OBSERVER

    def send_packed_command(conn: Any, *args: Any, **kwargs: Any) -> Any:
        if counted(conn):
            traffic.add("sends")
        return originals[0](conn, *args, **kwargs)

    def read_response(conn: Any, *args: Any, **kwargs: Any) -> Any:
        if counted(conn):
            traffic.add("replies")
        return originals[1](conn, *args, **kwargs)

    def connect(conn: Any, *args: Any, **kwargs: Any) -> Any:
        if counted(conn):
            traffic.add("connects")
        return originals[2](conn, *args, **kwargs)

    base.send_packed_command = send_packed_command  # type: ignore[method-assign]
    base.read_response = read_response  # type: ignore[method-assign]
    tcp._connect = connect  # type: ignore[method-assign]
    try:
        yield traffic
    finally:
        base.send_packed_command, base.read_response, tcp._connect = originals  # type: ignore[method-assign]


@contextlib.contextmanager
def private_redis(*extra: str) -> Iterator[PrivateRedis]:
    """Yield a private server, killed at the end whatever happens."""
    server = PrivateRedis(*extra)
    try:
        yield server
    finally:
        server.stop()


class HeldReader:
    """
    A reader thread paused right after the SELECT whose SQL contains ``marker``
    returned (the rows are loaded, the fill not yet sent), until :meth:`release`.
    """

    def __init__(self, read: Callable[[], Any], marker: str) -> None:
        self.loaded = threading.Event()
        self._go = threading.Event()
        self._read = read
        self._marker = marker
        self.worker = Worker(self._run, name="held-reader")

    def _hold(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if not self.loaded.is_set() and sql.lstrip().upper().startswith("SELECT") and self._marker in sql:
            self.loaded.set()
            assert self._go.wait(15), "the test never released the reader"
        return result

    def _run(self) -> Any:
        with connections["default"].execute_wrapper(self._hold):
            return self._read()

    def start(self) -> None:
        self.worker.start()
        assert self.loaded.wait(15), "the reader never ran its SELECT"

    def release(self) -> Any:
        self._go.set()
        return self.worker.result()


@contextlib.contextmanager
def sqlite_wal() -> Iterator[None]:
    """
    On SQLite, switch to WAL for the duration: a reader held after its SELECT keeps
    its snapshot while a writer commits (the interleaving MariaDB gives, where
    mysqlclient buffers the whole result); in the default journal mode the two
    would deadlock. Elsewhere, do nothing.
    """
    connection = connections["default"]
    if connection.vendor != "sqlite":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=DELETE")
