"""
``@refresh_ahead`` functions the suite reads in its own process and refreshes in
its Celery worker. Their loaders are steered through Redis keys the test sets (under
the suite's prefix, so they are deleted before each test):

- ``cpt:t:calls:<name>``: incremented by every run of the loader, in any process
  (the count the tests assert, causally);
- ``cpt:t:fail:<name>``: while it exists the loader raises;
- ``cpt:t:hold:<name>``: while it exists the loader waits (after counting and
  setting ``cpt:t:entered:<name>``), so a test can act while a refresh runs.
"""

from __future__ import annotations

import time
from typing import Any

from cachepatterns_app import refresh_ahead
from cachepatterns_app.store import get_store
from tests.refreshapp.models import Headline

__all__ = ["owner_titles", "steady", "wide", "xfetched"]

#: Longest a held loader waits for the test to let it go.
HOLD_LIMIT = 60.0


def flag(kind: str, name: str) -> str:
    return f"cpt:t:{kind}:{name}"


def load(name: str) -> int:
    """Count one run of loader ``name``; raise or wait as the test's flags say."""
    # Through the app's store: the same client on django-redis and Django's RedisCache.
    redis = get_store("default").client
    n = int(redis.incr(flag("calls", name)))
    if redis.exists(flag("hold", name)):
        redis.set(flag("entered", name), n)
        deadline = time.monotonic() + HOLD_LIMIT
        while redis.exists(flag("hold", name)) and time.monotonic() < deadline:
            time.sleep(0.01)
    if redis.exists(flag("fail", name)):
        raise RuntimeError(f"loader {name} failed on purpose")
    return n


@refresh_ahead(key="ra:steady:{item}", ttl=2, factor=0.5)
def steady(item: str) -> dict[str, Any]:
    """A short TTL, for reads across several TTL periods."""
    return {"item": item, "n": load("steady")}


@refresh_ahead(key="ra:wide:{item}", ttl=60, factor=0.2)
def wide(item: str) -> dict[str, Any]:
    """A long TTL whose window (the last 12 s) the tests enter by shortening the key's PTTL."""
    return {"item": item, "n": load("wide")}


@refresh_ahead(key="ra:xfetched:{item}", ttl=600, factor=0.01, beta=1.0)
def xfetched(item: str) -> dict[str, Any]:
    """XFetch on (beta 1), a tiny window (6 s): only the compute time brings a refresh early."""
    return {"item": item, "n": load("xfetched")}


@refresh_ahead(
    key="ra:owner:{owner}:titles",
    ttl=60,
    factor=0.2,
    family="ra:owner:{owner}",
    depends_on={Headline: "owner"},
)
def owner_titles(owner: int) -> dict[str, Any]:
    """A family member that depends on the owner's headlines."""
    n = load("owner_titles")
    titles = list(Headline.objects.filter(owner=owner).order_by("pk").values_list("title", flat=True))
    return {"owner": owner, "n": n, "titles": titles}
