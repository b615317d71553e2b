"""
The demo project: ``manage.py cachepatterns_demo`` tells the scenario correctly,
and the blog's pages use the cache (hits cost no SQL query; a new post shows on
its author's first page at once).

The command runs in a subprocess under the demo's own settings, on a fresh SQLite
file and the suite's Redis. The view tests need the blog app in the test settings
(``"demo_project.blog"`` in ``INSTALLED_APPS``) and are skipped without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.test import Client

from tests.support import MYSQL, settle, wait_until

ROOT = Path(__file__).resolve().parent.parent


def run_demo(
    tmp_path: Path, redis_url: str | None = None, database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env: dict[str, str] = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "demo_project.settings",
        "DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        # The suite's Redis (REDIS_URL if set, else the one the test settings found).
        "REDIS_URL": redis_url or str(settings.CACHES["default"]["LOCATION"]),
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        [sys.executable, "manage.py", "cachepatterns_demo", "--no-color"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_demo_command_tells_the_scenario_twice_in_a_row(tmp_path: Path) -> None:
    stories = []
    for run in (1, 2):
        result = run_demo(tmp_path)
        out = result.stdout
        assert result.returncode == 0, f"run {run}:\n{out}\n{result.stderr}"
        assert "[FAILED]" not in out
        assert re.search(r"All \d+ expectations met\.", out)
        # Seeded on the fresh file, found again the second time.
        assert ("seeded 3 authors and 75 posts" if run == 1 else "seed data present") in out
        step1 = out.split("1. First read")[1].split("2. Second read")[0]
        assert re.search(r"got:\s+miss, 1 SQL query, [\d.]+ ms -> 'Ada Lovelace'", step1)
        step2 = out.split("2. Second read")[1].split("3. Rename")[0]
        assert re.search(r"got:\s+hit, 0 SQL queries", step2)
        assert "cached=True, invalidations=0" in out  # before COMMIT
        assert "cached=False, invalidations=1" in out  # after COMMIT
        step5 = out.split("5. Pages of posts")[1].split("6. Write-through")[0]
        # Right after renaming her, the story calls her by her new name.
        assert "Ada King, Countess of Lovelace: pages 1, 2, 3" in step5
        assert "Ada Lovelace" not in step5
        assert len(re.findall(r"got:\s+miss, 1 SQL query", step5)) == 7  # 3 + 1 cold, 3 after the new post
        assert len(re.findall(r"got:\s+hit, 0 SQL queries", step5)) == 4  # 3 warm + the other author
        assert "still a hit, 0 SQL queries" in step5
        step6 = out.split("6. Write-through")[1].split("7. Statistics")[0]
        assert "puts before commit=0, after=1" in step6
        assert re.search(r"got:\s+hit, 0 SQL queries, [\d.]+ ms -> '.*\(edited by the demo\)'", step6)
        assert "blog.author" in out.split("7. Statistics")[1].split("8. Refresh-ahead")[0]
        step8 = out.split("8. Refresh-ahead")[1].split("9. Put the seed data back")[0]
        assert "started a Celery worker" in step8
        assert re.search(r"got:\s+miss, 1 SQL query", step8)  # the first read only
        assert re.search(r"got:\s+(\d+) reads: \1 hits, 0 misses, 0 SQL queries", step8)
        assert step8.count("[ok]") == 3
        step9 = out.split("9. Put the seed data back")[1]
        assert "name 'Ada Lovelace' and headline 'Analyst of the Analytical Engine' restored" in step9
        assert "1 demo post(s) deleted" in step9
        stories.append(_story(out))
    # The second run tells exactly the first one's story: nothing grows from run to run.
    assert stories[0] == stories[1]
    _assert_seed_state(tmp_path / "demo.sqlite3")


def _story(out: str) -> str:
    """Return the demo's output without what differs between runs (timings, the setup)."""
    story = out.split("1. First read")[1]
    # How many reads and refreshes fit in the refresh-ahead step's seconds varies.
    before, trending = story.split("8. Refresh-ahead")
    trending, after = trending.split("9. Put the seed data back")
    story = before + re.sub(r"\d+", "N", trending) + after
    story = re.sub(r"[\d.]+ ms", "N ms", story)
    story = re.sub(r"written at \d\d:\d\d:\d\d", "written at T", story)
    story = re.sub(r"post #\d+ '", "post #N '", story)
    story = re.sub(r"\(pid \d+\)", "(pid N)", story)
    return re.sub(r"version \d+", "version N", story)


def _assert_seed_state(path: Path) -> None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        name = db.execute("SELECT name FROM blog_author WHERE slug = 'ada-lovelace'").fetchone()[0]
        headline = db.execute(
            "SELECT headline FROM blog_profile JOIN blog_author ON blog_author.id = author_id "
            "WHERE slug = 'ada-lovelace'"
        ).fetchone()[0]
        demo_posts = db.execute("SELECT COUNT(*) FROM blog_post WHERE title LIKE '[demo] %'").fetchone()[0]
    assert (name, headline, demo_posts) == ("Ada Lovelace", "Analyst of the Analytical Engine", 0)


def test_demo_command_says_what_to_create_when_the_database_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-directory" / "demo.sqlite3"
    result = run_demo(tmp_path, database_url=f"sqlite:///{missing}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"its directory {missing.parent} does not exist. Create the directory" in result.stderr


@pytest.mark.skipif(not MYSQL, reason="the MySQL/MariaDB advice needs the suite to run on MySQL/MariaDB")
def test_demo_command_says_how_to_create_a_missing_mysql_database(tmp_path: Path) -> None:
    config = settings.DATABASES["default"]
    user = config.get("USER") or "root"
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    host, port = config.get("HOST") or "127.0.0.1", config.get("PORT") or 3306
    name = f"cp_missing_{os.getpid()}"
    result = run_demo(tmp_path, database_url=f"mysql://{user}{password}@{host}:{port}/{name}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"The MySQL/MariaDB database '{name}' does not exist" in result.stderr
    assert f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4" in result.stderr


def test_demo_command_fails_loudly_without_redis(tmp_path: Path) -> None:
    result = run_demo(tmp_path, redis_url="redis://127.0.0.1:1/0")
    assert result.returncode != 0
    assert "is unavailable" in result.stderr


# -- the blog's views (need "demo_project.blog" in the test settings) ------------------------

needs_blog = pytest.mark.skipif(
    not apps.is_installed("demo_project.blog"),
    reason="add 'demo_project.blog' to INSTALLED_APPS in tests/settings.py to test the demo's views",
)


def _token(response: Any) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.content.decode())
    assert match, "the form page has no CSRF token"
    return match.group(1)


@pytest.fixture
def blog() -> Any:
    from demo_project.blog import models

    ada = models.Author.objects.create(name="Ada", email="ada@example.com", slug="ada")
    models.Profile.objects.create(author=ada, headline="First programmer")
    models.Post.objects.bulk_create(models.Post(author=ada, title=f"Post {n:02d}") for n in range(1, 13))
    models.ada = ada  # type: ignore[attr-defined]
    return models


@needs_blog
@pytest.mark.urls("demo_project.urls")
@pytest.mark.django_db(transaction=True)
class TestViews:
    def test_author_page_is_served_from_the_cache_the_second_time(
        self, blog: Any, client: Client, django_assert_num_queries: Any, counts: Any
    ) -> None:
        url = f"/authors/{blog.ada.pk}/"
        assert client.get(url).status_code == 200
        hits = counts("blog.author").get("hit", 0)
        with django_assert_num_queries(0):
            response = client.get(url)
        assert response.status_code == 200
        assert "First programmer" in response.content.decode()
        assert counts("blog.author")["hit"] == hits + 1

    def test_trending_page_is_a_hit_after_its_first_view(
        self, blog: Any, client: Client, django_assert_num_queries: Any, counts: Any, redis: Any
    ) -> None:
        response = client.get("/trending/")
        assert response.status_code == 200
        assert "Post 12" in response.content.decode()  # newest post of the only author
        assert wait_until(lambda: counts("trending:posts:top:{limit}").get("fill"))
        settle()
        from demo_project.blog.queries import trending_posts
        from tests.support import plain_keys

        # Its TTL is 2 s: give it a minute, so the next view is a hit (and not yet due) on any machine.
        assert redis.pexpire(plain_keys(trending_posts.key(limit=5)).value, 60_000)
        with django_assert_num_queries(0):
            again = client.get("/trending/")
        assert again.context["ranking"] == response.context["ranking"]
        assert counts("trending:posts:top:{limit}")["hit"] == 1

    def test_posts_page_and_missing_author(self, blog: Any, client: Client) -> None:
        response = client.get(f"/authors/{blog.ada.pk}/posts/?page=2")
        assert response.status_code == 200
        assert [p.title for p in response.context["posts"]] == ["Post 02", "Post 01"]
        assert client.get("/authors/999999/").status_code == 404

    def test_new_post_shows_on_page_one_at_once(self, blog: Any, django_assert_num_queries: Any) -> None:
        client = Client(enforce_csrf_checks=True)
        posts_url = f"/authors/{blog.ada.pk}/posts/"
        first = client.get(posts_url)
        assert first.context["posts"][0].title == "Post 12"
        with django_assert_num_queries(0):
            client.get(posts_url)  # author, count and page 1 are all cached now

        form_url = f"/authors/{blog.ada.pk}/posts/new/"
        token = _token(client.get(form_url))
        assert client.post(form_url, {"title": "No token", "body": ""}).status_code == 403
        response = client.post(form_url, {"csrfmiddlewaretoken": token, "title": "Fresh", "body": "b"})
        assert response.status_code == 302
        assert response["Location"] == posts_url

        page = client.get(posts_url)
        assert [p.title for p in page.context["posts"]][:2] == ["Fresh", "Post 12"]
        assert page.context["pages"] == 2

    def test_profile_edit_is_a_hit_with_the_new_value(
        self, blog: Any, django_assert_num_queries: Any
    ) -> None:
        client = Client(enforce_csrf_checks=True)
        url = f"/authors/{blog.ada.pk}/profile/"
        token = _token(client.get(url))
        response = client.post(
            url, {"csrfmiddlewaretoken": token, "headline": "Edited", "website": "https://example.com/"}
        )
        assert response.status_code == 302
        with django_assert_num_queries(0):
            page = client.get(f"/authors/{blog.ada.pk}/")
        assert page.context["profile"].headline == "Edited"
        assert page.context["profile"].version == 1

    def test_home_and_stats_pages(self, blog: Any, client: Client) -> None:
        client.get(f"/authors/{blog.ada.pk}/")
        assert "Ada" in client.get("/").content.decode()
        response = client.get("/stats/")
        assert response.status_code == 200
        assert "blog.author" in response.content.decode()

    def test_stats_page_fits_a_laptop_screen(self, blog: Any, client: Client) -> None:
        from cachepatterns_app import stats

        client.get(f"/authors/{blog.ada.pk}/")
        client.get(f"/authors/{blog.ada.pk}/")
        stats.record("degraded", "blog.author", 2)
        html = client.get("/stats/").content.decode()
        headers = re.findall(r"<th[^>]*>(.*?)</th>", html)
        # Nine columns, not fourteen; the hit ratio comes right after hits and misses.
        assert headers == [
            "model / key",
            "hits",
            "misses",
            "hit ratio",
            "fills",
            "waits",
            "invalidations",
            "puts",
            "other",
        ]
        # Rare events are listed where they happened, with what they mean on hover.
        assert 'title="read served from the database because Redis was unavailable">degraded 2</span>' in html
        # The page is laid out wide (72rem = 1152 px), the table scrolls inside it.
        assert '<body class="wide">' in html
        assert '<div class="scroll">\n<table class="stats">' in html
        assert "body.wide { max-width: 72rem; }" in html


def test_the_demo_says_that_the_embedded_redis_keeps_running() -> None:
    from django.test import override_settings

    from demo_project.blog.preflight import embedded_redis_note
    from demo_project.embedded import embedded_dir

    embedded = {
        "default": {**settings.CACHES["default"], "LOCATION": f"unix://{embedded_dir()}/redis.sock?db=0"}
    }
    with override_settings(CACHES=embedded):
        note = embedded_redis_note()
    assert note is not None
    assert "keeps running" in note
    assert "make stop-embedded" in note
    tcp = {"default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:6379/0"}}
    with override_settings(CACHES=tcp):
        assert embedded_redis_note() is None
