"""
The cache-statistics admin page (``cachepatterns_app.admin``) through Django's test
client: who may see it, who may act, CSRF and methods, the confirmation and the
messages, what each action does, and the two machine formats.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse

from cachepatterns_app import cache_aside, stats
from cachepatterns_app.patterns.write_behind import operations as write_behind
from tests.support import keys_of, settle
from tests.testapp.models import Author, Post

ROOT = Path(__file__).resolve().parent.parent
PAGE = "/admin/cachepatterns_app/stats/"
ACTIONS = ["flush/", "dead-letters/replay/", "dead-letters/purge/", "invalidate/", "reset/"]


def staff(django_user_model: Any, name: str, *codenames: str) -> Any:
    user = django_user_model.objects.create_user(name, password="pw-" + name, is_staff=True)
    perms = Permission.objects.filter(content_type__app_label="cachepatterns_app", codename__in=codenames)
    assert perms.count() == len(codenames), list(perms)
    user.user_permissions.add(*perms)
    return user


@pytest.fixture
def viewer(django_user_model: Any) -> Any:
    return staff(django_user_model, "viewer", "view_cachestats")


@pytest.fixture
def operator(django_user_model: Any) -> Any:
    return staff(django_user_model, "operator", "view_cachestats", "change_cachestats")


def as_user(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# -- who may see the page -----------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_is_the_stats_models_changelist_at_the_contract_url() -> None:
    assert reverse("admin:cachepatterns_app_stats_changelist") == PAGE


@pytest.mark.django_db
def test_anonymous_users_are_sent_to_the_login_page() -> None:
    response = Client().get(PAGE)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert Client().get(PAGE + "?format=json").status_code == 302


@pytest.mark.django_db
def test_staff_without_the_permission_get_403(django_user_model: Any) -> None:
    nobody = staff(django_user_model, "nobody")
    assert as_user(nobody).get(PAGE).status_code == 403
    assert as_user(nobody).get(PAGE + "?format=prometheus").status_code == 403


@pytest.mark.django_db
def test_staff_with_the_permission_see_the_page_and_it_is_in_the_admin_index(viewer: Any) -> None:
    client = as_user(viewer)
    response = client.get(PAGE)
    assert response.status_code == 200
    assert response.templates[0].name == "admin/cachepatterns_app/stats/page.html"
    assert "admin/base_site.html" in [t.name for t in response.templates]
    body = response.content.decode()
    assert "Health" in body
    assert "Redis server" in body
    assert 'class="cp-chart' in body
    # A viewer sees no action.
    assert 'id="cp-flush"' not in body
    assert 'id="cp-reset"' not in body
    index = client.get("/admin/").content.decode()
    assert f'href="{PAGE}"' in index
    assert "Cache statistics" in index


# -- actions: permission, CSRF, method, confirmation -------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("action", ACTIONS)
def test_actions_answer_405_to_get(operator: Any, action: str) -> None:
    assert as_user(operator).get(PAGE + action).status_code == 405


@pytest.mark.django_db
@pytest.mark.parametrize("action", ACTIONS)
def test_actions_without_csrf_are_refused(operator: Any, action: str) -> None:
    client = as_user(operator, enforce_csrf_checks=True)
    assert client.post(PAGE + action, {"confirm": "yes"}).status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("action", ACTIONS)
def test_actions_need_the_change_permission(viewer: Any, action: str, monkeypatch: Any) -> None:
    called = []
    monkeypatch.setattr(write_behind, "flush", lambda *a, **k: called.append("flush") or 0)
    monkeypatch.setattr(stats, "reset", lambda: called.append("reset"))
    assert as_user(viewer).post(PAGE + action, {"confirm": "yes", "all": "yes"}).status_code == 403
    assert called == []


@pytest.mark.django_db
def test_actions_with_csrf_work_for_an_operator(operator: Any) -> None:
    client = as_user(operator, enforce_csrf_checks=True)
    client.get(PAGE)  # sets the CSRF cookie
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    response = client.post(PAGE + "reset/", {"confirm": "yes", "csrfmiddlewaretoken": token})
    assert response.status_code == 302


@pytest.mark.django_db
def test_an_action_first_asks_for_confirmation(operator: Any, monkeypatch: Any) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(write_behind, "flush", lambda model=None, wait=True: calls.append(wait) or 0)
    client = as_user(operator)
    response = client.post(PAGE + "flush/")
    assert response.status_code == 200
    assert response.templates[0].name == "admin/cachepatterns_app/stats/confirm.html"
    assert "Flush the write-behind queue to the database now?" in response.content.decode()
    assert calls == []
    response = client.post(PAGE + "flush/", {"confirm": "yes"}, follow=True)
    assert calls == [True]
    assert response.redirect_chain == [(PAGE, 302)]


# -- what each action does --------------------------------------------------------------------


class FakeQueue:
    """A stand-in for write-behind's operations: three pending writes, two dead letters."""

    def __init__(self) -> None:
        self.pending = 3
        self.letters = {"1-0": "testapp.author", "2-0": "testapp.author"}
        self.calls: list[Any] = []

    def status(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "models": [
                {
                    "label": "testapp.author",
                    "pending": self.pending,
                    "oldest_pending_age": 2.0 if self.pending else None,
                    "stream_length": self.pending,
                    "dead_letters": len(self.letters),
                    "consumers": 1,
                }
            ],
        }

    def flush(self, model: Any = None, *, wait: bool = True) -> int:
        self.calls.append(("flush", model, wait))
        written, self.pending = self.pending, 0
        return written

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return [
            {"id": i, "label": label, "pk": n, "error": "boom", "attempts": 8, "at": "2026-01-01T00:00:00Z"}
            for n, (i, label) in enumerate(sorted(self.letters.items()))
        ][:limit]

    def replay(self, ids: list[str] | None = None) -> int:
        self.calls.append(("replay", ids))
        return len(self.letters if ids is None else ids)

    def purge(self, ids: list[str] | None = None) -> int:
        self.calls.append(("purge", ids))
        gone = list(self.letters) if ids is None else ids
        for i in gone:
            self.letters.pop(i, None)
        return len(gone)


@pytest.fixture
def queue(monkeypatch: Any) -> FakeQueue:
    fake = FakeQueue()
    for name in ("status", "flush", "dead_letters", "replay", "purge"):
        monkeypatch.setattr(write_behind, name, getattr(fake, name))
    return fake


@pytest.mark.django_db
def test_flush_drains_the_queue_and_says_so(operator: Any, queue: FakeQueue) -> None:
    client = as_user(operator)
    page = client.get(PAGE).content.decode()
    assert '<span id="cp-wb-pending">3</span>' in page
    assert "3 write(s) are pending." in client.post(PAGE + "flush/").content.decode()
    response = client.post(PAGE + "flush/", {"confirm": "yes"}, follow=True)
    assert queue.calls == [("flush", None, True)]
    assert messages_of(response) == [
        "Flushed write-behind: 3 row(s) written to the database; 0 write(s) pending."
    ]
    assert '<span id="cp-wb-pending">0</span>' in response.content.decode()


@pytest.mark.django_db
def test_flush_against_the_real_empty_queue(operator: Any) -> None:
    response = as_user(operator).post(PAGE + "flush/", {"confirm": "yes"}, follow=True)
    assert messages_of(response) == [
        "Flushed write-behind: 0 row(s) written to the database; 0 write(s) pending."
    ]
    assert sum(m["pending"] for m in write_behind.status()["models"]) == 0


@pytest.mark.django_db
def test_dead_letters_are_listed_replayed_and_purged(operator: Any, queue: FakeQueue) -> None:
    client = as_user(operator)
    page = client.get(PAGE).content.decode()
    assert 'value="1-0"' in page
    assert 'value="2-0"' in page
    # The confirmation carries the selection to the confirmed request.
    confirm = client.post(PAGE + "dead-letters/replay/", {"ids": ["2-0"]}).content.decode()
    assert "Replay 1 dead letter(s)?" in confirm
    assert 'name="ids" value="2-0"' in confirm
    response = client.post(PAGE + "dead-letters/replay/", {"ids": ["2-0"], "confirm": "yes"}, follow=True)
    assert messages_of(response) == ["Replayed 1 dead letter(s)."]
    response = client.post(PAGE + "dead-letters/purge/", {"all": "yes", "confirm": "yes"}, follow=True)
    assert messages_of(response) == ["Purged 2 dead letter(s)."]
    assert queue.calls == [("replay", ["2-0"]), ("purge", None)]
    response = client.post(PAGE + "dead-letters/purge/", {"confirm": "yes"}, follow=True)
    assert messages_of(response) == ["Select dead letters to purge, or choose purge all."]
    assert queue.calls == [("replay", ["2-0"]), ("purge", None)]


@pytest.mark.django_db
def test_real_empty_dead_letters_replay_and_purge_nothing(operator: Any) -> None:
    client = as_user(operator)
    for action, said in (("replay", "Replayed 0"), ("purge", "Purged 0")):
        response = client.post(
            PAGE + f"dead-letters/{action}/", {"all": "yes", "confirm": "yes"}, follow=True
        )
        assert messages_of(response) == [f"{said} dead letter(s)."]


@cache_aside(key="admin:{author_id}", family="admin:{author_id}:f", depends_on={Post: "author_id"})
def titles(author_id: int) -> list[str]:
    return list(Post.objects.filter(author_id=author_id).values_list("title", flat=True))


@pytest.mark.django_db(transaction=True)
def test_invalidate_rows_of_a_model_from_the_page(operator: Any, redis: Any) -> None:
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    bob = Author.objects.create(name="Bob", email="bob@example.com")
    for author in (ada, bob):
        Author.objects.get(pk=author.pk)
    settle()
    client = as_user(operator)
    form = {"kind": "model", "model": "testapp.Author", "pks": f"{ada.pk}"}
    assert (
        "Invalidate 1 cached testapp.Author row(s)?"
        in client.post(PAGE + "invalidate/", form).content.decode()
    )
    response = client.post(PAGE + "invalidate/", {**form, "confirm": "yes"}, follow=True)
    assert messages_of(response) == ["Invalidated 1 testapp.Author row(s)."]
    assert not redis.exists(keys_of(Author, ada.pk).value)
    assert redis.exists(keys_of(Author, bob.pk).value)
    # No primary key: every row of the model.
    form = {"kind": "model", "model": "testapp.Author", "pks": ""}
    assert (
        "The database has 2 testapp.Author rows" in client.post(PAGE + "invalidate/", form).content.decode()
    )
    response = client.post(PAGE + "invalidate/", {**form, "confirm": "yes"}, follow=True)
    assert messages_of(response) == ["Invalidated every testapp.Author row (2 row(s))."]
    assert not redis.exists(keys_of(Author, bob.pk).value)


@pytest.mark.django_db(transaction=True)
def test_invalidate_a_family_from_the_page(operator: Any, django_assert_num_queries: Any) -> None:
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    titles(ada.pk)
    settle()
    client = as_user(operator)
    form = {
        "kind": "family",
        "family": "admin:{author_id}:f",
        "params": f"author_id={ada.pk}",
        "confirm": "yes",
    }
    response = client.post(PAGE + "invalidate/", form, follow=True)
    assert messages_of(response) == [
        f"Invalidated family 'admin:{{author_id}}:f' for {{'author_id': '{ada.pk}'}}."
    ]
    with django_assert_num_queries(1):
        titles(ada.pk)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"kind": "family", "family": "admin:{author_id}:f", "params": "page=1"}, "takes exactly author_id"),
        ({"kind": "family", "family": "admin:{author_id}:f", "params": "author_id"}, "name=value"),
        ({"kind": "family", "family": "cp:{x}:made-up", "params": "x=1"}, "Select a valid choice"),
        ({"kind": "model", "model": "testapp.Post", "pks": "1"}, "Select a valid choice"),
        ({"kind": "model", "model": "auth.User", "pks": "1"}, "Select a valid choice"),
    ],
)
def test_invalidate_refuses_what_is_not_declared_or_malformed(operator: Any, form: Any, message: str) -> None:
    response = as_user(operator).post(PAGE + "invalidate/", {**form, "confirm": "yes"}, follow=True)
    (said,) = messages_of(response)
    assert said.startswith("Nothing was invalidated"), said
    assert message in said, said


@pytest.mark.django_db
def test_reset_forgets_the_statistics(operator: Any) -> None:
    stats.record("hit", "testapp.author", 5)
    stats.flush()
    response = as_user(operator).post(PAGE + "reset/", {"confirm": "yes"}, follow=True)
    assert messages_of(response) == [
        "Statistics reset: every counter, duration and the history start from zero."
    ]
    assert stats.snapshot() == {}


# -- the numbers: a workload in two processes --------------------------------------------------


def run_in_subprocess(code: str) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "CP_WORKER_DB_NAME": str(connection.settings_dict["NAME"]),
        "REDIS_URL": settings.REDIS_URL,
    }
    done = subprocess.run(
        [sys.executable, "-m", "django", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.django_db(transaction=True)
def test_json_counts_a_workload_of_two_processes(viewer: Any) -> None:
    authors = [Author.objects.create(name=f"A{i}", email=f"a{i}@example.com") for i in range(10)]
    pks = [a.pk for a in authors]
    # Another process: the 10 misses and 40 hits (each row read 5 times, in order on
    # one connection, so every fill has run before the next read of its row).
    run_in_subprocess(
        "from tests.testapp.models import Author\n"
        f"for pk in {pks}:\n"
        "    for _ in range(5): Author.objects.get(pk=pk)\n"
    )
    # This process: 50 more hits of the rows the other one filled.
    for pk in pks:
        for _ in range(5):
            Author.objects.get(pk=pk)
    data = as_user(viewer).get(PAGE + "?format=json").json()
    row = data["labels"]["testapp.author"]
    assert (row["events"]["miss"], row["events"]["hit"], row["events"]["fill"]) == (10, 90, 10)
    assert row["hit_rate"] == 0.9
    assert (row["kind"], row["pattern"]) == ("model", "cache-aside")
    assert data["patterns"]["cache-aside"]["hit_rate"] == 0.9
    (load,) = [d for d in data["durations"] if d["label"] == "testapp.author" and d["name"] == "db_load"]
    assert load["count"] == 10  # one database load per miss, timed in the other process
    assert sum(data["history"]["reads"]) == 100  # the chart's minutes hold the same reads
    # The page shows the same numbers.
    page = as_user(viewer).get(PAGE).content.decode()
    assert '<td class="num cp-hit">90</td>' in page
    assert '<td class="num cp-rate">90.0 %</td>' in page


@pytest.mark.django_db
def test_counters_without_a_column_are_listed_on_their_row(viewer: Any) -> None:
    stats.record("bypass", "testapp.author", 2)
    stats.record("corrupt", "testapp.author")
    stats.record("refresh_done", "testapp.author", 4)
    page = as_user(viewer).get(PAGE).content.decode()
    table = page.split('id="cp-labels"')[1].split("</tbody>")[0]
    assert f'<span title="{stats.EVENTS["bypass"]}">bypass 2</span>' in table
    assert f'<span title="{stats.EVENTS["corrupt"]}">corrupt 1</span>' in table
    assert "refresh_done" not in table  # counted in the "refreshes" column


# -- machine formats ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_json_is_the_same_report_the_command_prints(viewer: Any) -> None:
    stats.record("hit", "testapp.author", 3)
    data = as_user(viewer).get(PAGE + "?format=json").json()
    assert set(data) >= {
        "redis",
        "labels",
        "patterns",
        "durations",
        "write_behind",
        "refresh_ahead",
        "history",
        "health",
    }
    assert data["labels"]["testapp.author"]["events"] == {"hit": 3}
    assert len(data["history"]["minutes"]) == stats.HISTORY_MINUTES == 60
    assert data["redis"]["available"] is True
    assert data["redis"]["version"]


@pytest.mark.django_db
def test_prometheus_text_parses_and_carries_the_counters(viewer: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    stats.record("hit", "testapp.author", 90)
    stats.record("miss", "testapp.author", 10)
    stats.observe("db_load", "testapp.author", 0.004)
    response = as_user(viewer).get(PAGE + "?format=prometheus")
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    (hit,) = families["cachepatterns_hit"].samples
    assert hit.labels == {"label": "testapp.author", "kind": "model", "pattern": "cache-aside"}
    assert hit.value == 90
    assert families["cachepatterns_hit"].type == "counter"
    load = families["cachepatterns_db_load_seconds"]
    assert load.type == "histogram"
    by_le = {s.labels["le"]: s.value for s in load.samples if s.name.endswith("_bucket")}
    assert (by_le["0.0025"], by_le["0.005"], by_le["+Inf"]) == (0, 1, 1)
    assert families["cachepatterns_up"].samples[0].value == 1
    assert families["cachepatterns_redis_used_memory_bytes"].samples[0].value > 0


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


@pytest.mark.django_db
def test_a_scraper_authenticates_with_basic_credentials(viewer: Any, django_user_model: Any) -> None:
    staff(django_user_model, "nobody")
    client = Client()
    assert client.get(PAGE + "?format=prometheus", **basic("viewer", "pw-viewer")).status_code == 200
    assert client.get(PAGE + "?format=json", **basic("viewer", "pw-viewer")).json()["redis"]["available"]
    wrong = client.get(PAGE + "?format=prometheus", **basic("viewer", "nope"))
    assert wrong.status_code == 401
    assert wrong["WWW-Authenticate"].startswith("Basic")
    assert client.get(PAGE + "?format=prometheus", **basic("nobody", "pw-nobody")).status_code == 403
    assert client.post(PAGE + "?format=json", **basic("viewer", "pw-viewer")).status_code == 405
    # Credentials open the machine formats only, never the HTML page or a session.
    assert client.get(PAGE, **basic("viewer", "pw-viewer")).status_code == 302
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_post_to_the_page_itself_is_405(viewer: Any) -> None:
    assert as_user(viewer).post(PAGE).status_code == 405


@pytest.mark.django_db
def test_the_report_json_round_trips(viewer: Any) -> None:
    report = stats.report()
    assert json.loads(json.dumps(report)) == report


@pytest.mark.django_db
def test_the_page_renders_while_redis_is_down(viewer: Any) -> None:
    down = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_TIMEOUT": 0.2, "SOCKET_CONNECT_TIMEOUT": 0.2},
        }
    }
    with override_settings(CACHES=down):
        response = as_user(viewer).get(PAGE)
        data = as_user(viewer).get(PAGE + "?format=json").json()
    assert response.status_code == 200
    body = response.content.decode()
    assert "Redis is unavailable" in body
    assert 'data-check="redis_down"' in body
    assert data["redis"]["available"] is False


@pytest.mark.django_db
def test_the_command_prints_the_document_the_page_serves(viewer: Any) -> None:
    from io import StringIO

    from django.core.management import call_command

    stats.record("hit", "testapp.author", 7)
    out = StringIO()
    call_command("cachepatterns_stats", "--json", stdout=out)
    command = json.loads(out.getvalue())
    page = as_user(viewer).get(PAGE + "?format=json").json()
    assert command.keys() == page.keys()
    for key in ("labels", "patterns", "totals", "durations", "events"):
        assert command[key] == page[key], key
