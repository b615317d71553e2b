"""
A throwaway ``mariadbd`` of one test's own: a fresh data directory made by
``mariadb-install-db``, a free loopback port, no grant tables. A test may shut it
down cleanly (``SHUTDOWN``) or kill it (SIGKILL) and start it again on the same
data directory, which is what it committed (InnoDB's crash recovery included).

Nothing here touches the suite's shared database server. Tests skip when the
binaries or the MySQL client module are missing (:func:`available`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support import PATIENCE, _free_port

__all__ = ["PrivateMariaDB", "available", "private_mariadb"]

SERVERS = ("mariadbd", "mysqld")
INSTALLERS = ("mariadb-install-db", "mysql_install_db")
#: Where distributions put the server binary, often outside a normal user's PATH.
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin"])


def _binary(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name, path=SEARCH)
        if found:
            return found
    return None


def available() -> str:
    """Return why a private server cannot run here ("" if it can)."""
    if _binary(SERVERS) is None or _binary(INSTALLERS) is None:
        return "mariadbd and mariadb-install-db are not installed"
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        return "the MySQL client module (mysqlclient) is not installed"
    return ""


class PrivateMariaDB:
    """A ``mariadbd`` on a free loopback port with a data directory of its own."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cp-mariadb-"))
        self.datadir = self.dir / "data"
        self.socket = self.dir / "mariadb.sock"
        self.log = self.dir / "error.log"
        self.process: subprocess.Popen[bytes] | None = None
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        installed = subprocess.run(
            [
                str(_binary(INSTALLERS)),
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *as_root,
            ],
            capture_output=True,
            check=False,
            timeout=PATIENCE * 4,
        )
        if installed.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"mariadb-install-db failed: {installed.stderr.decode(errors='replace')}")
        self.start()

    def start(self) -> None:
        """Start the server (again: same port, same data directory) and wait until it answers."""
        self.process = subprocess.Popen(
            [
                str(_binary(SERVERS)),
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.dir / 'mariadb.pid'}",
                f"--log-error={self.log}",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
                *(["--user=root"] if os.geteuid() == 0 else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + PATIENCE * 4  # crash recovery after a SIGKILL included
        while True:
            try:
                self.connect().close()
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"private mariadbd did not start:\n{self.log_tail()}") from None
            time.sleep(0.05)

    def connect(self, **kwargs: Any) -> Any:
        """Return a new MySQLdb connection to the server (as root, no password)."""
        import MySQLdb

        return MySQLdb.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=5, **kwargs)

    def execute(self, sql: str) -> None:
        connection = self.connect()
        try:
            connection.cursor().execute(sql)
        finally:
            connection.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def shutdown(self) -> None:
        """Stop the server cleanly (``SHUTDOWN``) and wait until its process has exited."""
        self.execute("SHUTDOWN")
        assert self.process is not None
        self.process.wait(PATIENCE * 4)

    def kill(self) -> None:
        """Kill the server with SIGKILL (no shutdown, no last flush), keeping its files."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(PATIENCE)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Kill the server if it runs and remove its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(PATIENCE)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_mariadb() -> Iterator[PrivateMariaDB]:
    """Yield a private server, killed and removed at the end whatever happens."""
    server = PrivateMariaDB()
    try:
        yield server
    finally:
        server.stop()
