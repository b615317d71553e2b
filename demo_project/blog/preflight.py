"""
What the demo checks before it starts, and says instead of a traceback: that its
database exists and its Redis answers; and, at the end, that an embedded Redis it
may have started keeps running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import CommandError
from django.db import OperationalError, connection
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from cachepatterns_app.conf import get_settings
from demo_project.embedded import embedded_dir

__all__ = ["embedded_redis_note", "masked", "require_database", "require_redis"]

# MySQL/MariaDB "Unknown database"; PostgreSQL says 'database "x" does not exist'.
_MYSQL_UNKNOWN_DATABASE = 1049


def masked(url: str) -> str:
    """Return ``url`` without its password, for printing."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def require_database() -> None:
    """Connect to the database, or raise ``CommandError`` saying what to create."""
    try:
        connection.ensure_connection()
    except OperationalError as e:
        raise CommandError(_database_advice(connection.settings_dict, e)) from e


def _database_advice(config: dict[str, Any], error: OperationalError) -> str:
    vendor, name = connection.vendor, str(config.get("NAME") or "")
    host = config.get("HOST") or "localhost"
    if vendor == "mysql" and error.args and error.args[0] == _MYSQL_UNKNOWN_DATABASE:
        user = config.get("USER") or "root"
        port = f" -P {config['PORT']}" if config.get("PORT") else ""
        return (
            f"The MySQL/MariaDB database {name!r} does not exist on {host}. Create it:\n"
            f'    mysql -h {host}{port} -u {user} -p -e "CREATE DATABASE `{name}` CHARACTER SET utf8mb4"\n'
            "then run the demo again (it creates its tables itself), or point DATABASE_URL at a "
            "database that exists."
        )
    if vendor == "postgresql" and "does not exist" in str(error):
        return (
            f"The PostgreSQL database {name!r} does not exist on {host}. Create it:\n"
            f"    createdb -h {host} {name}\n"
            "then run the demo again, or point DATABASE_URL at a database that exists."
        )
    if vendor == "sqlite" and not Path(name).parent.is_dir():
        return (
            f"The SQLite file {name} cannot be created: its directory {Path(name).parent} does not "
            "exist. Create the directory (the demo creates the file), or point DATABASE_URL "
            "elsewhere (unset, the demo uses demo.sqlite3 at the project root)."
        )
    return (
        f"Cannot connect to the {vendor} database {name!r} on {host}: {error}. Check that the "
        "server runs and DATABASE_URL (user, password, host, port, database name)."
    )


def require_redis() -> None:
    """Ping the demo's Redis, or raise ``CommandError`` saying how to get one."""
    # The library would serve every read from the database with Redis down (that is
    # its job), and the story would then fail step by step: say why once instead.
    alias = get_settings().cache_alias
    try:
        get_redis_connection(alias).ping()
    except RedisError as e:
        raise CommandError(
            f"Redis at {masked(str(settings.CACHES[alias]['LOCATION']))} is unavailable ({e}). "
            "Start it or point REDIS_URL at one that runs (unset, the demo uses 127.0.0.1:6379 or "
            "starts an embedded Redis)."
        ) from e


def embedded_redis_note() -> str | None:
    """Return a note about the embedded Redis if the demo uses it, else None."""
    location = str(settings.CACHES[get_settings().cache_alias]["LOCATION"])
    socket = embedded_dir() / "redis.sock"
    if not location.startswith("unix://") or str(socket) not in location:
        return None
    return (
        f"The embedded Redis (socket {socket}) keeps running, for `manage.py runserver`, "
        "the Celery worker and the next run; stop it with `make stop-embedded`."
    )
