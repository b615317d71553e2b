"""
A private 3-master Redis Cluster on free loopback ports, for the cluster tests.

:class:`LocalCluster` starts three ``redis-server --cluster-enabled yes`` processes,
joins them with ``redis-cli --cluster create``, waits until every node reports
``cluster_state:ok``, and :meth:`LocalCluster.stop` kills them and removes their
directory whatever state they are in.

``python -m tests.cluster run -- <command>`` runs a command with a fresh cluster
named by ``CP_REDIS_CLUSTER`` (comma-separated node URLs), which
``tests/settings.py`` turns into a ``ClusterClient`` cache: that is how ``.ci/run``
runs the pattern test modules against a cluster.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["LocalCluster", "available"]

#: Generous: the box is shared and CI runs under a CPU hog.
STARTUP_TIMEOUT = 90.0


def available() -> bool:
    """Return whether ``redis-server`` and ``redis-cli`` are on PATH."""
    return bool(shutil.which("redis-server") and shutil.which("redis-cli"))


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """Return ``n`` free ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 <= 65535 and port not in ports and _port_free(port + 10000):
            ports.append(port)
    return ports


def _command(port: int, *args: str, timeout: float = 5.0) -> str:
    reply = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return reply.stdout


class LocalCluster:
    """Three cluster-enabled primaries (no replicas) on loopback."""

    def __init__(self, masters: int = 3) -> None:
        self.masters = masters
        self.ports: list[int] = []
        self.dir = ""
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def urls(self) -> list[str]:
        """Return one ``redis://127.0.0.1:<port>`` URL per node."""
        return [f"redis://127.0.0.1:{port}" for port in self.ports]

    @property
    def location(self) -> str:
        """Return the node URLs comma-separated (a ``LOCATION`` / ``CP_REDIS_CLUSTER`` value)."""
        return ",".join(self.urls)

    def start(self) -> LocalCluster:
        """Start the nodes, create the cluster and wait until every node says it is ok."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="cp-cluster-")
        for attempt in range(5):
            self.ports = _free_ports(self.masters)
            self.processes = [self._spawn(port) for port in self.ports]
            if self._wait(lambda: all(_command(p, "PING").strip() == "PONG" for p in self.ports), 20):
                break
            # A port was taken between the check and the bind: try others.
            self._kill()
            if attempt == 4:
                raise RuntimeError(f"cluster nodes did not start:\n{self.logs()}")
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")

        def ready() -> bool:
            for port in self.ports:
                info = _command(port, "CLUSTER", "INFO")
                if "cluster_state:ok" not in info or f"cluster_known_nodes:{self.masters}" not in info:
                    return False
            return True

        if not self._wait(ready, STARTUP_TIMEOUT):
            raise RuntimeError(f"cluster never reached cluster_state:ok:\n{self.logs()}")

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        log = Path(self.dir) / f"redis-{port}.log"
        return subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(Path(self.dir) / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                "15000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                self.dir,
                "--logfile",
                str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @staticmethod
    def _wait(condition: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if condition():  # type: ignore[operator]
                    return True
            time.sleep(0.2)
        return False

    def logs(self) -> str:
        """Return the nodes' log files (for failure messages)."""
        out = []
        for log in sorted(Path(self.dir).glob("redis-*.log")) if self.dir else []:
            out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
        return "\n".join(out)

    def _kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.wait(timeout=10)
        self.processes = []

    def stop(self) -> None:
        """Kill every node and remove the cluster's directory."""
        self._kill()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """``run -- <command>``: run a command against a fresh cluster (CP_REDIS_CLUSTER)."""
    import os

    if len(argv) < 3 or argv[0] != "run" or argv[1] != "--":
        print("usage: python -m tests.cluster run -- <command> [args…]", file=sys.stderr)
        return 2
    # A TERM (CI timeout, Ctrl-C of a parent) unwinds the with-block: nodes killed, dir removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with LocalCluster() as cluster:
        print(f"Redis Cluster on {cluster.location}", flush=True)
        env = {**os.environ, "CP_REDIS_CLUSTER": cluster.location}
        return subprocess.call(argv[2:], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
