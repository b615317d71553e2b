"""
The only module that talks to Redis.

It borrows the redis-py client of the Redis cache ``CACHE_ALIAS`` — django-redis's
or Django's own ``RedisCache`` — so the pools and options configured in ``CACHES``
are reused, runs the Lua scripts in
``lua/`` by SHA (loaded once, reloaded after a server restart), and puts a
circuit breaker in front of every call: a connection failure or timeout raises
:class:`~cachepatterns_app.exceptions.CacheUnavailable`, and while the breaker is
open calls raise it at once instead of waiting for the socket timeout again.

Fills whose reply nobody needs (the caller already has its row) are sent with
``CLIENT REPLY SKIP``: the command is written to the socket and no reply comes
back, which takes a network round trip off every cache miss.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from importlib.resources import files
from typing import Any, TypeVar

from django.core.signals import setting_changed
from django.dispatch import receiver
from redis import exceptions as redis_errors

from cachepatterns_app.breaker import CircuitBreaker
from cachepatterns_app.conf import get_settings
from cachepatterns_app.exceptions import CacheUnavailable, ConfigurationError

__all__ = ["SCRIPTS", "Store", "get_store", "new_token", "reset"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCRIPTS: dict[str, str] = {
    path.name.removesuffix(".lua"): path.read_text(encoding="utf-8")
    for path in files("cachepatterns_app").joinpath("lua").iterdir()
    if path.name.endswith(".lua")
}

_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError)
_token_prefix = os.urandom(8).hex()
_token_counter = itertools.count()


def _new_token_prefix() -> None:
    # A forked worker (gunicorn --preload, Celery prefork) must not reuse its parent's
    # tokens: two processes holding "the same" lease would break single flight and
    # let a stale fill through.
    global _token_prefix, _token_counter
    _token_prefix = os.urandom(8).hex()
    _token_counter = itertools.count()


os.register_at_fork(after_in_child=_new_token_prefix)


def new_token() -> str:
    """Return a lease token unique across processes (forked ones included) and threads."""
    return f"{_token_prefix}{next(_token_counter):x}"


class Store:
    """Redis operations for one cache alias, behind one circuit breaker."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        settings = get_settings()
        breaker = settings.CIRCUIT_BREAKER
        self.breaker = CircuitBreaker(
            alias, threshold=int(breaker["THRESHOLD"]), cooldown=float(breaker["COOLDOWN"])
        )
        self._client: Any = None
        self._lock = threading.Lock()
        self._shas: dict[str, str] = {}
        self._direct_memo: tuple[Any, Callable[..., Any] | None] | None = None
        self._reply_skip: bool | None = None
        #: Called with the raw client before any other call once :attr:`armed` is set
        #: (work queued while Redis was down must reach it before a read can).
        self.recovery_hooks: list[Callable[[Any], bool]] = []
        self.armed = False
        self._recover_lock = threading.Lock()

    # -- connection ---------------------------------------------------------------

    @property
    def client(self) -> Any:
        """Return the redis-py client of the django-redis cache ``alias``."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = _django_redis_client(self.alias)
        return self._client

    @property
    def is_cluster(self) -> bool:
        """Return whether the client is a Redis Cluster client."""
        return hasattr(self.client, "get_nodes")

    def guard(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` behind the circuit breaker, mapping Redis errors."""
        breaker = self.breaker
        if breaker.state != "closed" and not breaker.allow():
            raise CacheUnavailable(
                f"Redis for cache {self.alias!r} is marked down (circuit breaker open); "
                "retrying after the cooldown.",
                unsent=True,
            )
        try:
            if self.armed:
                self._recover()
            result = operation()
        except _CONNECTION_ERRORS as e:
            breaker.failure(e)
            raise CacheUnavailable(
                f"Redis for cache {self.alias!r} is unreachable: {e}", unsent=_unsent(e)
            ) from e
        except redis_errors.RedisError as e:
            # The server answered, so it is up: an error reply does not trip the breaker.
            breaker.success()
            raise CacheUnavailable(f"Redis for cache {self.alias!r} refused a command: {e}") from e
        except BaseException:
            breaker.release()
            raise
        breaker.success()
        return result

    def _recover(self) -> None:
        # Raises a Redis error (and so keeps everything queued) if Redis is still down.
        with self._recover_lock:
            results = [hook(self.client) for hook in self.recovery_hooks]  # run every hook
            self.armed = not all(results)

    # -- scripts --------------------------------------------------------------

    def _sha(self, name: str) -> str:
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = str(self.client.script_load(SCRIPTS[name]))
        return sha

    def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self.client
        run = self._direct(client) or client.evalsha
        try:
            return run(self._sha(name), len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            # The server restarted or SCRIPT FLUSH ran: load every script again.
            self._shas.clear()
            return run(self._sha(name), len(keys), *keys, *args)

    def _direct(self, client: Any) -> Callable[..., Any] | None:
        """
        Return an ``EVALSHA`` that talks to a pooled connection of ``client`` itself,
        or None where only the client's own ``evalsha`` will do.

        A script call is the whole of a write-behind save and of a cached read, and
        redis-py's ``execute_command`` costs as much again as the round trip's own
        client work (metrics, debug hooks, argument checks that ``EVALSHA`` never
        needs; it has no reply callback). This keeps what matters of it: a connection
        from the client's pool (which replaces one the server dropped while it was
        idle), the connection's retry policy with a disconnect between attempts
        (django-redis's default makes no second attempt; a policy that retries
        timeouts re-runs a script that may have run, as redis-py's own path does), and
        the connection's own reconnect request. Only a plain standalone client qualifies:
        not a cluster, not a single-connection client, not an object standing in for one.
        """
        memo = self._direct_memo
        if memo is not None and memo[0] is client:
            return memo[1]
        direct = _direct_evalsha(client) if _is_plain_client(client) else None
        self._direct_memo = (client, direct)
        return direct

    def script(self, name: str, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        """Run the Lua script ``lua/<name>.lua`` and return its reply."""
        breaker = self.breaker
        if breaker.state != "closed" or self.armed:
            return self.guard(lambda: self._evalsha(name, keys, args))
        # The hit path: guard() inlined, since this runs on every cached read.
        try:
            result = self._evalsha(name, keys, args)
        except _CONNECTION_ERRORS as e:
            breaker.failure(e)
            raise CacheUnavailable(
                f"Redis for cache {self.alias!r} is unreachable: {e}", unsent=_unsent(e)
            ) from e
        except redis_errors.RedisError as e:
            raise CacheUnavailable(f"Redis for cache {self.alias!r} refused a command: {e}") from e
        breaker.success()
        return result

    def script_no_reply(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Run a script whose reply is not needed, without waiting for it."""
        self.send_no_reply([("EVAL", SCRIPTS[name], len(keys), *keys, *args)])

    # -- plain commands --------------------------------------------------------

    def execute(self, *command: Any) -> Any:
        """Run one Redis command and return its reply."""
        return self.guard(lambda: self.client.execute_command(*command))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run redis-py's ``client.<method>(…)`` (whose reply parsing the raw command lacks)."""
        return self.guard(lambda: getattr(self.client, method)(*args, **kwargs))

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Return the values of ``keys`` (None where missing), one round trip per node."""
        if not keys:
            return []

        def run() -> list[bytes | None]:
            # Inside the guard: building a cluster client connects (and may fail).
            client = self.client
            if self.is_cluster:
                return list(client.mget_nonatomic(keys))
            return list(client.mget(keys))

        return self.guard(run)

    def pipeline(self, commands: Iterable[tuple[Any, ...]], *, raise_on_error: bool = True) -> list[Any]:
        """
        Run commands in one round trip (not as a transaction) and return the replies;
        with ``raise_on_error=False`` error replies come back as exception objects.
        """
        batch = list(commands)
        if not batch:
            return []

        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for command in batch:
                if command[0] == "SCRIPT":
                    _, name, keys, args = command
                    # execute_command, not pipe.evalsha(): redis-py's ClusterPipeline
                    # blocks the method but routes the raw EVALSHA by its first key.
                    pipe.execute_command("EVALSHA", self._sha(name), len(keys), *keys, *args)
                else:
                    pipe.execute_command(*command)
            try:
                replies = list(pipe.execute(raise_on_error=raise_on_error))
            except redis_errors.NoScriptError:
                self._shas.clear()
                return run()
            if any(isinstance(r, redis_errors.NoScriptError) for r in replies):
                # Re-running repeats the other commands: all are idempotent invalidations
                # or puts (a family bump twice only invalidates twice).
                self._shas.clear()
                return run()
            return replies

        return self.guard(run)

    def send_no_reply(self, commands: Sequence[tuple[Any, ...]]) -> bool:
        """
        Write ``commands`` to Redis without reading replies (``CLIENT REPLY SKIP``).

        Only for commands whose outcome does not matter to the caller (fills,
        statistics): a lost one costs a later cache miss, never correctness.
        Falls back to an ordinary pipeline where the server or client cannot skip.
        Return whether the commands were sent.
        """
        # Never the breaker's probe: with no reply it could not tell whether Redis is up.
        if self.breaker.state != "closed":
            return False
        try:
            if self._reply_skip is None:
                self._reply_skip = self._probe_reply_skip()
            if not self._reply_skip:
                pipe = self.client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                pipe.execute(raise_on_error=False)
                self.breaker.success()
                return True
            pool = self.client.connection_pool
            connection = pool.get_connection()
            try:
                packed: list[tuple[Any, ...]] = []
                for command in commands:
                    packed.append(("CLIENT", "REPLY", "SKIP"))
                    packed.append(command)
                connection.send_packed_command(connection.pack_commands(packed))
            except BaseException:
                connection.disconnect()
                raise
            finally:
                pool.release(connection)
        except _CONNECTION_ERRORS as e:
            self.breaker.failure(e)
            logger.warning("Redis %s: could not send %d command(s): %s", self.alias, len(commands), e)
            return False
        except redis_errors.RedisError as e:
            logger.warning("Redis %s: could not send %d command(s): %s", self.alias, len(commands), e)
            return False
        return True

    def _probe_reply_skip(self) -> bool:
        """Return whether this server honours ``CLIENT REPLY SKIP`` on this client."""
        if self.is_cluster:
            return False
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command(
                connection.pack_commands(
                    [("CLIENT", "REPLY", "SKIP"), ("PING",), ("ECHO", "cachepatterns-probe")]
                )
            )
            first = connection.read_response()
            if first in (b"cachepatterns-probe", "cachepatterns-probe"):
                return True
            # Not honoured (renamed command, proxy): drain the remaining replies.
            while first not in (b"cachepatterns-probe", "cachepatterns-probe"):
                first = connection.read_response()
            return False
        except redis_errors.ResponseError:
            connection.read_response()
            connection.read_response()
            return False
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)


def _is_plain_client(client: Any) -> bool:
    import redis

    return (
        # What this path keeps of execute_command was checked against redis-py 8 (whose
        # execute_command retries as the connection's retry policy says); redis-py 5
        # also filters by retry_on_error, so older versions keep their own path.
        _REDIS_MAJOR >= 8
        and isinstance(client, redis.Redis)
        and type(client).execute_command is redis.Redis.execute_command
        and getattr(client, "connection", None) is None
        and "EVALSHA" not in getattr(client, "response_callbacks", {})
        and callable(getattr(getattr(client, "connection_pool", None), "get_connection", None))
    )


def _redis_major() -> int:
    import redis

    try:
        return int(str(redis.__version__).split(".")[0])
    except ValueError:
        return 0


_REDIS_MAJOR = _redis_major()


def _direct_evalsha(client: Any) -> Callable[..., Any]:
    import inspect

    pool = client.connection_pool
    # redis-py 5.0-5.2 require the command name; later versions deprecate passing it.
    parameters = inspect.signature(pool.get_connection).parameters
    needs_name = (
        "command_name" in parameters and parameters["command_name"].default is inspect.Parameter.empty
    )
    name_args: tuple[str, ...] = ("EVALSHA",) if needs_name else ()

    def evalsha(*args: Any) -> Any:
        try:
            # The pool connects a new connection (and reconnects a stale one) here.
            conn = pool.get_connection(*name_args)
        except _CONNECTION_ERRORS as e:
            _mark_unsent(e)
            raise
        sent = False
        try:

            def attempt() -> Any:
                nonlocal sent
                # Connected first, apart: a failure to connect means the script did not
                # run, which a caller may act on (an increment written around Redis);
                # a failure once it is sent leaves that unknown.
                if not getattr(conn, "_sock", None):
                    conn.connect()
                sent = True
                packed = None
                if type(getattr(conn, "_command_packer", None)) is _HIREDIS_PACKER:
                    # What that packer does for text, numbers and bytes, without its
                    # per-argument generator (a save is one such call). Anything else
                    # (a bytearray, a value it refuses) goes through the packer itself,
                    # which converts it or raises redis-py's DataError; nothing is sent.
                    try:
                        packed = [_hiredis_pack(("EVALSHA", *args))]
                    except TypeError:
                        packed = None
                if packed is None:
                    conn.send_command("EVALSHA", *args)
                else:
                    conn.send_packed_command(packed)
                return conn.read_response()

            retry = conn.retry
            if type(retry) is _Retry and retry.get_retries() == 0:
                # What call_with_retry does with no retries (django-redis's default
                # policy), without its backoff bookkeeping.
                try:
                    return attempt()
                except retry._supported_errors:
                    conn.disconnect()
                    raise
            return retry.call_with_retry(attempt, lambda _error: conn.disconnect())
        except _CONNECTION_ERRORS as e:
            if not sent:
                _mark_unsent(e)
            raise
        finally:
            try:
                reconnect = getattr(conn, "should_reconnect", None)
                if reconnect is not None and reconnect():
                    conn.disconnect()
                    conn.connect()
            finally:
                pool.release(conn)

    return evalsha


def _packer_and_retry() -> tuple[Any, Any, Any]:
    from redis.retry import Retry

    try:
        import hiredis
        from redis.connection import HiredisRespSerializer
    except ImportError:  # no hiredis: redis-py's own packer, always
        return None, None, Retry
    return HiredisRespSerializer, hiredis.pack_command, Retry


_HIREDIS_PACKER, _hiredis_pack, _Retry = _packer_and_retry()


def _mark_unsent(error: BaseException) -> None:
    """Note on ``error`` that it came before the command reached Redis (see :func:`_unsent`)."""
    vars(error)["cachepatterns_unsent"] = True


def _unsent(error: BaseException) -> bool:
    """Whether ``error`` is known to have come before the command reached Redis."""
    return bool(getattr(error, "cachepatterns_unsent", False))


def _django_redis_client(alias: str) -> Any:
    from django.core.cache import caches

    try:
        backend = caches[alias]
    except Exception as e:
        raise ConfigurationError(
            f"CACHEPATTERNS['CACHE_ALIAS'] is {alias!r}, which is not a usable cache in "
            f"CACHES ({e}). Add it, or point CACHE_ALIAS at your django-redis cache."
        ) from e
    # django-redis exposes its client as .client, Django's own RedisCache as ._cache;
    # both hand out the redis-py client of the pool CACHES configured.
    client = getattr(backend, "client", None)
    if client is None or not hasattr(client, "get_client"):
        client = getattr(backend, "_cache", None)
    if client is None or not hasattr(client, "get_client"):
        raise ConfigurationError(
            f"Cache {alias!r} is not a Redis cache; set its BACKEND to "
            "'django_redis.cache.RedisCache' or 'django.core.cache.backends.redis.RedisCache'."
        )
    return client.get_client(write=True)


_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()


def get_store(alias: str | None = None) -> Store:
    """Return the shared :class:`Store` for ``alias`` (default: ``CACHE_ALIAS``)."""
    name = alias or get_settings().cache_alias
    store = _stores.get(name)
    if store is None:
        with _stores_lock:
            store = _stores.get(name)
            if store is None:
                store = _stores[name] = Store(name)
    return store


def reset() -> None:
    """Forget every store (settings changed, or a test swapped servers)."""
    with _stores_lock:
        _stores.clear()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    # A store holds a client for CACHES[CACHE_ALIAS] and a breaker sized by
    # CACHEPATTERNS: tests that override either must get fresh ones.
    if setting in {"CACHEPATTERNS", "CACHES", "SECRET_KEY"}:
        reset()
