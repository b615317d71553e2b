"""
Line charts drawn on the server as inline SVG: the admin page needs no script,
no CDN and no network to show the last hour.

A minute with no data (nobody read, no sample of the queue) is a gap in the line,
not a zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

__all__ = ["line_chart"]

WIDTH, HEIGHT = 600, 160
LEFT, RIGHT, TOP, BOTTOM = 48, 24, 10, 22


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def line_chart(
    values: Sequence[float | None],
    *,
    title: str,
    y_max: float | None = None,
    y_format: Callable[[float], str] = lambda v: f"{v:g}",
    css_class: str = "",
) -> SafeString:
    """Return an SVG line chart of ``values`` (one per minute, oldest first; None: no data)."""
    present = [v for v in values if v is not None]
    top = y_max if y_max is not None else _nice_max(max(present, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(values) - 1)

    def x(i: int) -> float:
        return LEFT + i * step

    def y(v: float) -> float:
        return TOP + plot_h * (1 - min(max(v / top, 0.0), 1.0))

    parts = [
        f'<svg class="cp-chart {escape(css_class)}" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<rect class="cp-plot" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        gy = TOP + plot_h * (1 - fraction)
        parts.append(f'<line class="cp-grid" x1="{LEFT}" y1="{gy:.1f}" x2="{LEFT + plot_w}" y2="{gy:.1f}"/>')
        parts.append(
            f'<text class="cp-axis" x="{LEFT - 4}" y="{gy + 4:.1f}" text-anchor="end">'
            f"{escape(y_format(top * fraction))}</text>"
        )
    minutes = len(values)
    for i, label in (
        (0, f"-{minutes - 1} min"),
        (minutes // 2, f"-{minutes - 1 - minutes // 2} min"),
        (minutes - 1, "now"),
    ):
        parts.append(f'<text class="cp-axis" x="{x(i):.1f}" y="{HEIGHT - 6}" text-anchor="middle">')
        parts.append(f"{escape(label)}</text>")
    run: list[str] = []
    runs: list[list[str]] = []
    for i, v in enumerate(values):
        if v is None:
            if run:
                runs.append(run)
            run = []
            continue
        run.append(f"{x(i):.1f},{y(v):.1f}")
    if run:
        runs.append(run)
    for points in runs:
        if len(points) == 1:
            cx, cy = points[0].split(",")
            parts.append(f'<circle class="cp-point" cx="{cx}" cy="{cy}" r="2.5"/>')
        else:
            parts.append(f'<polyline class="cp-line" points="{" ".join(points)}"/>')
    if not runs:
        parts.append(
            f'<text class="cp-empty" x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" '
            'text-anchor="middle">no data in the last hour</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - numbers and escaped text only
