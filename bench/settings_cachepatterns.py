"""
Settings for measuring cachepatterns the way the other libraries are measured: in
its own process, against the raw GET of its own bytes. Only the key prefix
differs from ``bench.settings``, so this child's cleanup cannot touch the keys of
the main run.
"""

from __future__ import annotations

from bench.settings import *  # noqa: F403
from bench.settings import CACHEPATTERNS

CACHEPATTERNS = {**CACHEPATTERNS, "KEY_PREFIX": "cpbench-self"}
