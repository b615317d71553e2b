"""
Time operations fairly: interleaved rounds, setup outside the timed region,
median and p90 of the per-round samples.

Each round runs every variant of a group once, so drift (a neighbour's test
run, CPU frequency, the MariaDB buffer pool) affects all variants alike; each
round runs them in a new (seeded, so repeatable) random order, so no variant always
runs right after the same other one. A rotation would not do: it keeps the cyclic
order, so in a group of three the second variant would always follow the first and
pay for the caches the first one cooled (or profit from the ones it warmed).
The garbage collector is paused while a group is timed (as ``timeit`` does)
and collected every few hundred rounds outside the timed regions.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Summary", "Variant", "measure", "percentile", "summarise", "summary_of"]


@dataclass
class Variant:
    """One measured operation; ``before``/``after`` run every round, untimed."""

    name: str
    label: str
    run: Callable[[], Any]
    before: Callable[[], Any] | None = None
    after: Callable[[], Any] | None = None


@dataclass
class Summary:
    """The distribution of one variant's samples, in nanoseconds."""

    name: str
    label: str
    samples: list[int] = field(repr=False)
    median: float = 0.0
    p90: float = 0.0
    minimum: float = 0.0

    @property
    def n(self) -> int:
        return len(self.samples)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the ``q`` quantile (0..1) of ``sorted_values``, linearly interpolated."""
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarise(variant: Variant, samples: list[int]) -> Summary:
    return summary_of(variant.name, variant.label, samples)


def summary_of(name: str, label: str, samples: list[int]) -> Summary:
    """Return the :class:`Summary` of ``samples`` (nanoseconds)."""
    ordered = sorted(samples)
    return Summary(
        name=name,
        label=label,
        samples=samples,
        median=percentile(ordered, 0.5),
        p90=percentile(ordered, 0.9),
        minimum=float(ordered[0]) if ordered else float("nan"),
    )


def measure(
    variants: Sequence[Variant],
    rounds: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Summary]:
    """Time ``variants`` interleaved for ``rounds`` rounds after ``warmup`` untimed ones."""
    for _ in range(warmup):
        for variant in variants:
            _once(variant)
    samples: dict[str, list[int]] = {v.name: [] for v in variants}
    clock = time.perf_counter_ns
    order = list(variants)
    shuffle = random.Random(len(order) * 1_000_003 + rounds).shuffle
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for index in range(rounds):
            shuffle(order)
            for variant in order:
                if variant.before is not None:
                    variant.before()
                run = variant.run
                start = clock()
                run()
                elapsed = clock() - start
                if variant.after is not None:
                    variant.after()
                samples[variant.name].append(elapsed)
            if index % 256 == 255:
                gc.collect()
                if progress is not None:
                    progress(f"{index + 1}/{rounds}")
    finally:
        if was_enabled:
            gc.enable()
    return {v.name: summarise(v, samples[v.name]) for v in variants}


def _once(variant: Variant) -> None:
    if variant.before is not None:
        variant.before()
    variant.run()
    if variant.after is not None:
        variant.after()
