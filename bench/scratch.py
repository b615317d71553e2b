"""
A private Redis server for the keyspace benchmark, on a free loopback port.

Filling the shared Redis with a million keys would disturb everyone else on the
machine (and ``KEYS`` on it would block their tests), so the family benchmark
starts its own server, from the same binary the embedded demo Redis uses, and
stops it afterwards.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time

from demo_project.embedded import redis_server_binary

__all__ = ["ScratchRedis"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ScratchRedis:
    """Start with :meth:`start`, stop with :meth:`stop` (also a context manager)."""

    def __init__(self) -> None:
        self.binary = redis_server_binary()
        self.process: subprocess.Popen[bytes] | None = None
        self.folder = ""
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> tuple[int, ...]:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
        return tuple(int(x) for x in match.groups()) if match else (0, 0, 0)

    def start(self) -> str:
        self.folder = tempfile.mkdtemp(prefix="cpbench-redis-")
        self.port = _free_port()
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.folder,
            "--logfile", f"{self.folder}/redis.log",
        ]  # fmt: skip
        if self.version() >= (7, 0, 0):
            # DEBUG POPULATE builds the million-key keyspace in a second; Redis 7 disables DEBUG by default.
            args += ["--enable-debug-command", "local"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"The scratch Redis ({self.binary}) did not start.")
            time.sleep(0.02)
        return self.url

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = ""

    def __enter__(self) -> ScratchRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
