"""
Refresh-ahead next to plain cache-aside (issue 11): a steady read load on one hot
key with a 5-second TTL, both variants side by side for the same seconds (so a
neighbour's load hits both alike), each read by two threads pacing themselves.

Measured per variant: every read's latency (p50, p99, max), the synchronous misses
(this process's ``miss`` counter: a reader computed the value), and the loader's
runs in any process (a Redis counter the loader increments, in this process on a
miss and in the Celery worker on a refresh). The worker is a real
``celery worker`` on a queue of this run's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["READERS", "refresh_bench", "refresh_verdicts"]

#: Reader threads per variant, and the pause each takes between two reads.
READERS = 2
PAUSE = 0.005
VARIANTS = (("aside", "@cache_aside", "bench:hot:aside"), ("ahead", "@refresh_ahead", "bench:hot:ahead"))
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def _worker() -> Iterator[str]:
    from bench.celery_app import app

    # This process enqueues the refreshes: through this app, whatever thread reads.
    app.set_default()
    queue = f"cpbench-refresh-{os.getpid()}"
    node = f"{queue}@bench"
    log = tempfile.NamedTemporaryFile("w+", prefix="cpbench-worker-", suffix=".log", delete=False)  # noqa: SIM115
    command = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "solo", "-Q", queue]
    command += ["-n", node, "-l", "warning", "--without-heartbeat", "--without-mingle", "--without-gossip"]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _answers(app, node):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bench's Celery worker did not start:\n" + Path(log.name).read_text())
            time.sleep(0.2)
        app.conf.task_default_queue = queue
        yield queue
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        with contextlib.suppress(Exception), app.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)  # type: ignore[attr-defined]
        log.close()
        os.unlink(log.name)


def _answers(app: Any, node: str) -> bool:
    with contextlib.suppress(Exception):
        return bool(app.control.ping(destination=[node], timeout=1.0))
    return False


def _reader(read: Callable[[], Any], stop: float, start: float, out: list[tuple[float, int]]) -> None:
    clock = time.perf_counter_ns
    while True:
        begin = clock()
        if begin / 1e9 >= stop:
            return
        read()
        out.append(((begin / 1e9) - start, clock() - begin))
        time.sleep(PAUSE)


def refresh_bench(seconds: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Run both variants side by side for ``seconds``; return their samples and counts."""
    from django_redis import get_redis_connection

    from bench import refreshed
    from cachepatterns_app import stats

    redis = get_redis_connection("default")
    functions = {"aside": refreshed.hot_aside, "ahead": refreshed.hot_ahead}
    with _worker():
        say(f"refresh-ahead vs cache-aside: {seconds:.0f} s of reads, TTL {refreshed.TTL} s, a Celery worker")
        for variant, fn in functions.items():
            fn.invalidate()  # type: ignore[attr-defined]
            redis.delete(refreshed.calls_key(variant))
        before = stats.local_counts()
        samples: dict[str, list[tuple[float, int]]] = {variant: [] for variant in functions}
        start = time.perf_counter()
        stop = start + seconds
        threads = [
            threading.Thread(target=_reader, args=(fn, stop, start, samples[variant]), daemon=True)
            for variant, fn in functions.items()
            for _ in range(READERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        time.sleep(0.5)  # the last refresh lands (its loader run is counted either way)
        after = stats.local_counts()
    out: dict[str, Any] = {"seconds": elapsed, "ttl": refreshed.TTL, "cost": refreshed.COST, "variants": {}}
    for variant, title, label in VARIANTS:
        points = sorted(samples[variant])
        latencies = sorted(ns for _, ns in points)
        # Reads that began once the first read had returned: the cache is warm.
        warm_at = min((at + ns / 1e9 for at, ns in points), default=0.0)
        warm = [ns for at, ns in points if at >= warm_at]

        def delta(event: str, label: str = label) -> int:
            field = f"{label}|{event}"
            return after.get(field, 0) - before.get(field, 0)

        loads = int(redis.get(refreshed.calls_key(variant)) or 0)
        out["variants"][variant] = {
            "title": title,
            "reads": len(latencies),
            "p50": _pct(latencies, 50),
            "p99": _pct(latencies, 99),
            "p999": _pct(latencies, 99.9),
            "max": latencies[-1] if latencies else 0,
            "max_warm": max(warm, default=0),
            "misses": delta("miss"),
            "waits": delta("wait"),
            "stale_served": delta("stale_served"),
            "loads": loads,
            "loads_per_minute": loads * 60 / elapsed,
            "timeline": _timeline(points, 0.1),
        }
    return out


def _pct(ordered: list[int], p: float) -> float:
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))])


def _timeline(points: list[tuple[float, int]], bucket: float) -> list[tuple[float, int]]:
    """Return the slowest read of every ``bucket`` seconds: (bucket start, ns)."""
    slowest: dict[int, int] = {}
    for at, ns in points:
        index = int(at / bucket)
        slowest[index] = max(slowest.get(index, 0), ns)
    return [(index * bucket, ns) for index, ns in sorted(slowest.items())]


def refresh_verdicts(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Return the issue 11 targets' verdicts, in ``report.evaluate``'s shape."""
    if not result:
        return [{"issue": 11, "target": "refresh-ahead under a steady read load", "verdict": "NOT MEASURED"}]
    aside, ahead = result["variants"]["aside"], result["variants"]["ahead"]
    seconds = result["seconds"]
    periods = seconds / result["ttl"]
    return [
        {
            "issue": 11,
            "target": f"refresh-ahead: 1 synchronous miss in {seconds:.0f} s (TTL {result['ttl']} s)",
            "measured": f"{ahead['misses']} (cache-aside: {aside['misses']})",
            "verdict": "PASS" if ahead["misses"] == 1 else "MISS",
        },
        {
            "issue": 11,
            # Side by side, a stall of the machine slows both alike; only cache-aside has a
            # read that pays the loader at every expiry.
            "target": "refresh-ahead: no expiry spike (max after the first read below cache-aside's)",
            "measured": f"max {ahead['max_warm'] / 1e6:.1f} ms (cache-aside: "
            f"{aside['max_warm'] / 1e6:.1f} ms, loader {result['cost'] * 1000:.0f} ms)",
            "verdict": "PASS" if ahead["max_warm"] < aside["max_warm"] else "MISS",
        },
        {
            "issue": 11,
            "target": "refresh-ahead: about one load per TTL period, not one per reader",
            "measured": f"{ahead['loads']} loads in {periods:.0f} periods (cache-aside: {aside['loads']})",
            "verdict": "PASS" if periods - 1 <= ahead["loads"] <= 2 * periods + 1 else "MISS",
        },
    ]
