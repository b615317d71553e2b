"""
The cache-statistics page in a real browser: Playwright drives the system Chromium
(``apt-get install chromium``; never ``playwright install``) against a live server.

The test logs in as a staff user, reads the numbers and the chart off the page,
flushes write-behind through the confirmation and sees the message and the
drained queue, and saves screenshots under ``tests/artifacts/``. With
``CP_SCREENSHOT=path`` it also writes the README's picture there
(``make screenshot`` → ``docs/admin-stats.png``).

A missing Chromium or Playwright fails the test (CI installs both), unless
``CP_SKIP_BROWSER=1`` says this machine has none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import models

from cachepatterns_app import stats
from cachepatterns_app.patterns.write_behind import operations as write_behind
from demo_project.blog.queries import author_posts
from tests.support import PATIENCE, settle
from tests.testapp.models import Author, Counter, Profile

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("CP_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CP_SKIP_BROWSER"):
        pytest.skip(f"{reason} (CP_SKIP_BROWSER is set)")
    pytest.fail(
        f"{reason}: apt-get install chromium, pip install -r requirements.txt (or set CP_SKIP_BROWSER=1)"
    )


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """
    Yield a fresh headless Chromium context (its own user-data directory), closed at
    the end. Playwright's sync API runs an event loop in this thread, where Django
    refuses database calls: do them before or after.
    """
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    profile = tempfile.mkdtemp(prefix="cp-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=ARGS,
                viewport={"width": 1280, "height": 900},
            )
            context.set_default_timeout(4 * PATIENCE * 1000)  # a give-up deadline only
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def workload() -> None:
    """10 misses and 90 hits on Author; a write-through model; a decorated function."""
    authors = [Author.objects.create(name=f"Author {i}", email=f"a{i}@example.com") for i in range(10)]
    for author in authors:
        for _ in range(10):
            Author.objects.get(pk=author.pk)
    ada = Profile.objects.create(handle="ada", name="Ada")
    ada.score = 1
    ada.save()
    for _ in range(4):
        Profile.objects.get(pk=ada.pk)
    for _ in range(3):
        author_posts(author_id=authors[0].pk)
    settle()
    stats.flush()


def queue_writes() -> Counter:
    """A write-behind row created and counted in Redis only: the flush button's work."""
    counter = Counter(name="page views")
    counter.save()  # queued (objects.create() would insert directly)
    for _ in range(3):
        Counter.objects.incr(counter.pk, "views", 2)
    assert not models.QuerySet(Counter).filter(pk=counter.pk).exists()  # not in the database yet
    return counter


def seed_history(redis: Any) -> None:
    """
    For the README's picture only (``CP_SCREENSHOT``): give the charts an hour of
    made-up minutes, so that they show lines rather than one point.
    """
    import math
    import time

    now = int(time.time() // 60)
    for back in range(1, stats.HISTORY_MINUTES):
        minute = stats._minute_key(now - back)
        wave = math.sin(back / 7)
        hits, misses = int(900 + 80 * wave), int(60 + 50 * math.cos(back / 5))
        redis.hset(
            minute,
            mapping={"e|hit": hits, "e|miss": misses, "g|demo.counter|wb_pending": int(40 + 35 * wave)},
        )
        redis.expire(minute, stats.HISTORY_TTL)


def test_the_page_in_chromium(live_server: Any, django_user_model: Any, redis: Any) -> None:
    user = django_user_model.objects.create_user("ops", password="ops-password", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="cachepatterns_app", codename__in=["view_cachestats", "change_cachestats"]
        )
    )
    workload()
    counter = queue_writes()
    if os.environ.get("CP_SCREENSHOT"):
        seed_history(redis)
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium() as context:
        offline = look_and_flush(context, live_server.url)
    assert offline == []
    assert sum(int(m.get("pending") or 0) for m in write_behind.status()["models"]) == 0
    # The button wrote the queued row: the database has it, with every increment.
    assert models.QuerySet(Counter).get(pk=counter.pk).views == 6


def look_and_flush(context: Any, url: str) -> list[str]:
    """Log in, check the page, flush write-behind; return requests that left the live server."""
    page = context.new_page()
    offline: list[str] = []
    # The page must work offline: nothing may be fetched from another host.
    page.on("request", lambda r: None if r.url.startswith(url) else offline.append(r.url))
    page.goto(f"{url}/admin/login/?next=/admin/cachepatterns_app/stats/?refresh=0")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "ops-password")
    page.click("input[type=submit]")
    page.wait_for_selector("#cp-stats")
    assert page.title().startswith("Cache statistics")

    row = page.locator('tr[data-label="testapp.author"]')
    assert row.locator("td.cp-hit").inner_text() == "90"
    assert row.locator("td.cp-miss").inner_text() == "10"
    assert row.locator("td.cp-rate").inner_text() == "90.0 %"
    assert page.locator('tr[data-label="testapp.profile"] td').nth(2).inner_text() == "write-through"
    # The charts are inline SVG drawn by the server, laid out by the browser.
    chart = page.locator("svg.cp-hit-rate")
    box = chart.bounding_box()
    assert box is not None
    assert box["width"] > 200
    assert box["height"] > 50
    assert chart.locator(".cp-line, .cp-point").count() >= 1
    assert page.locator("svg.cp-queue-depth").count() == 1
    assert page.locator("#cp-health li").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "admin-stats.png"), full_page=True)
    if os.environ.get("CP_SCREENSHOT"):
        page.screenshot(path=os.environ["CP_SCREENSHOT"], full_page=True)

    assert int(page.inner_text("#cp-wb-pending")) >= 1  # the queued create and increments
    page.click("#cp-flush")
    page.wait_for_selector("#cp-confirm")
    assert "Flush the write-behind queue to the database now?" in page.inner_text("#cp-confirm")
    page.click("#cp-confirm-yes")
    message = page.wait_for_selector(".messagelist .success")
    assert message is not None
    assert message.inner_text().startswith("Flushed write-behind: 1 row(s) written")
    assert message.inner_text().endswith("0 write(s) pending.")
    assert page.inner_text("#cp-wb-pending") == "0"
    page.screenshot(path=str(ARTIFACTS / "admin-stats-flushed.png"), full_page=True)
    # Auto-refresh: with ?refresh=1 the page reloads itself.
    page.goto(f"{url}/admin/cachepatterns_app/stats/?refresh=1")
    first = page.inner_text("#cp-stats p.cp-muted")
    with page.expect_navigation():
        pass  # the page's own script reloads it (a give-up deadline, never a measure)
    page.wait_for_selector("#cp-stats")
    assert page.inner_text("#cp-stats p.cp-muted").startswith("Summed over every process")
    assert first.startswith("Summed over every process")
    return offline
