"""Settings for the django-cachalot comparison process (cachalot patches the ORM globally)."""

from __future__ import annotations

from bench.settings import *  # noqa: F403
from bench.settings import CACHES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "cachalot"]
CACHES = {"default": {**CACHES["default"], "KEY_PREFIX": "cpbench-cachalot"}}
CACHALOT_CACHE = "default"
CACHALOT_TIMEOUT = 3600
# Only the tables the libraries are compared on (Django lists bench_author in the
# page query's tables because of the author_id lookup, so it must be allowed too).
CACHALOT_ONLY_CACHABLE_TABLES = ["bench_plainauthor", "bench_post", "bench_author"]
