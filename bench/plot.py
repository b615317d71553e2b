"""
The bench's plots — family invalidation, and refresh-ahead's latency over time: a
PNG through matplotlib when it is installed, else an SVG written by hand, so that
the bench never requires matplotlib.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.harness import Summary

__all__ = ["family_plot", "latency_plot", "latency_title", "title"]


def _fmt(ns: float) -> str:
    from bench.report import fmt_ns

    return fmt_ns(ns)


def family_plot(
    results: dict[str, Summary], sizes: tuple[int, ...], path: Path, keyspace: int
) -> Path | None:
    """Write the family-invalidation plot: PNG with matplotlib if installed, else a hand-made SVG."""
    ours = [results[f"family_{n}"].median for n in sizes if f"family_{n}" in results]
    seed = [results[f"seed_{n}"].median for n in sizes if f"seed_{n}" in results]
    if len(ours) != len(sizes) or len(seed) != len(sizes):
        return None
    try:
        return _png(sizes, ours, seed, path.with_suffix(".png"), title(keyspace))
    except ImportError:
        return _svg(sizes, ours, seed, path.with_suffix(".svg"), title(keyspace))


def title(keyspace: int) -> str:
    """Return the plot's title."""
    return f"Invalidating every cached page of one user ({keyspace:,} keys in Redis)"


def _png(sizes: tuple[int, ...], ours: list[float], seed: list[float], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.loglog(sizes, [s / 1000 for s in seed], "o-", color="#c0392b", label="seed: KEYS pattern + DEL")
    ax.loglog(
        sizes, [o / 1000 for o in ours], "o-", color="#2471a3", label="invalidate_family() (generation bump)"
    )
    for series, color in ((seed, "#c0392b"), (ours, "#2471a3")):
        for n, v in zip(sizes, series, strict=True):
            ax.annotate(
                _fmt(v), (n, v / 1000), textcoords="offset points", xytext=(0, 8), ha="center", color=color
            )
    ax.set_xlim(sizes[0] / 3, sizes[-1] * 3)
    ax.set_ylim(min(ours) / 1000 / 3, max(seed) / 1000 * 4)
    ax.set_xlabel("cached pages in the family")
    ax.set_ylabel("median time (µs, log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _svg(sizes: tuple[int, ...], ours: list[float], seed: list[float], path: Path, title: str) -> Path:
    width, height, left, right, top, bottom = 640, 380, 80, 20, 40, 60
    xs = [math.log10(n) for n in sizes]
    values = [v / 1000 for v in ours + seed]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    hi = max(hi, lo + 1)

    def px(x: float) -> float:
        return left + (x - xs[0]) / ((xs[-1] - xs[0]) or 1) * (width - left - right)

    def py(us: float) -> float:
        return top + (hi - math.log10(us)) / (hi - lo) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="13">{title}</text>',
    ]
    for exp in range(lo, hi + 1):
        y = py(10**exp)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{10**exp:g} µs</text>')
    for n, x in zip(sizes, xs, strict=True):
        parts.append(f'<text x="{px(x):.1f}" y="{height - bottom + 18}" text-anchor="middle">{n:,}</text>')
    parts.append(
        f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">cached pages in the family</text>'
    )
    for series, color, label in (
        (seed, "#c0392b", "seed: KEYS pattern + DEL"),
        (ours, "#2471a3", "invalidate_family()"),
    ):
        points = " ".join(f"{px(x):.1f},{py(v / 1000):.1f}" for x, v in zip(xs, series, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, v in zip(xs, series, strict=True):
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(v / 1000):.1f}" r="4" fill="{color}"/>')
            parts.append(
                f'<text x="{px(x) + 6:.1f}" y="{py(v / 1000) - 8:.1f}" fill="{color}">{_fmt(v)}</text>'
            )
        ly = top + 12 + (0 if color == "#c0392b" else 18)
        parts.append(
            f'<line x1="{left + 10}" x2="{left + 30}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{left + 36}" y="{ly + 4}">{label}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def latency_plot(result: dict[str, Any], path: Path) -> Path:
    """Write the refresh-ahead latency-over-time plot: PNG with matplotlib if installed, else SVG."""
    series = [
        (v["title"], [(t, ns / 1e6) for t, ns in v["timeline"]], color)
        for v, color in zip(result["variants"].values(), ("#c0392b", "#2471a3"), strict=True)
    ]
    heading = latency_title(result)
    try:
        return _latency_png(series, result["seconds"], path.with_suffix(".png"), heading)
    except ImportError:
        return _latency_svg(series, result["seconds"], path.with_suffix(".svg"), heading)


def latency_title(result: dict[str, Any]) -> str:
    """Return the latency plot's title."""
    return (
        f"Slowest read per 100 ms, one hot key, TTL {result['ttl']} s, loader {result['cost'] * 1000:.0f} ms"
    )


Series = list[tuple[str, list[tuple[float, float]], str]]


def _latency_png(series: Series, seconds: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    for label, points, color in series:
        ax.semilogy([t for t, _ in points], [ms for _, ms in points], "-", color=color, label=label, lw=1)
    ax.set_xlim(0, seconds)
    ax.set_xlabel("seconds")
    ax.set_ylabel("slowest read in 100 ms (ms, log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _latency_svg(series: Series, seconds: float, path: Path, title: str) -> Path:
    width, height, left, right, top, bottom = 760, 380, 80, 20, 40, 60
    values = [ms for _, points, _ in series for _, ms in points if ms > 0] or [1.0]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    hi = max(hi, lo + 1)

    def px(t: float) -> float:
        return left + t / (seconds or 1) * (width - left - right)

    def py(ms: float) -> float:
        return top + (hi - math.log10(max(ms, 10**lo))) / (hi - lo) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="13">{title}</text>',
    ]
    for exp in range(lo, hi + 1):
        y = py(10**exp)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{10**exp:g} ms</text>')
    step = 10 if seconds > 30 else 2
    for tick in range(0, int(seconds) + 1, step):
        parts.append(
            f'<text x="{px(tick):.1f}" y="{height - bottom + 18}" text-anchor="middle">{tick}</text>'
        )
    parts.append(f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">seconds</text>')
    for n, (label, points, color) in enumerate(series):
        line = " ".join(f"{px(t):.1f},{py(ms):.1f}" for t, ms in points)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1"/>')
        ly = top + 12 + 18 * n
        parts.append(
            f'<line x1="{left + 10}" x2="{left + 30}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{left + 36}" y="{ly + 4}">{label}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
