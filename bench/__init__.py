"""
The benchmark of cachepatterns: ``python -m bench`` (see ``bench.main``).

It measures, in one run and against the real MariaDB and Redis, what a cache hit,
a miss, a save and a family invalidation cost next to the baselines each issue's
target is stated against, and writes ``docs/benchmarks.md``.
"""
