"""
The cache-statistics page of the Django admin, ``/admin/cachepatterns_app/stats/``.

Built the admin's way: ``StatsAdmin.get_urls()`` replaces the changelist of the
table-less ``Stats`` model by the page, every view goes through
``admin_site.admin_view()`` (login redirect for anonymous users, CSRF) and renders
a ``TemplateResponse`` with ``admin_site.each_context()`` under a template that
extends ``admin/base_site.html``.

- ``GET``: the page (``?format=json``: the report; ``?format=prometheus``: the text
  exposition). Needs ``cachepatterns_app.view_cachestats``. The two machine formats
  also accept HTTP Basic credentials of such a user, so that a scraper needs no
  session (serve the admin over HTTPS).
- ``POST`` to ``flush/``, ``dead-letters/replay/``, ``dead-letters/purge/``,
  ``invalidate/``, ``reset/``: the actions. Need ``cachepatterns_app.change_cachestats``
  and CSRF; the first POST shows a confirmation, the confirmed one acts, leaves a
  message and redirects to the page. ``GET`` on them answers 405.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import authenticate
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_GET, require_POST

from cachepatterns_app import metrics, prometheus, stats
from cachepatterns_app.admin_forms import FamilyForm, ModelForm
from cachepatterns_app.charts import line_chart
from cachepatterns_app.exceptions import CachePatternsError
from cachepatterns_app.models import Stats
from cachepatterns_app.patterns.write_behind import operations as write_behind

__all__ = ["StatsAdmin"]

VIEW = "cachepatterns_app.view_cachestats"
CHANGE = "cachepatterns_app.change_cachestats"

#: Seconds between automatic reloads of the page (``?refresh=0`` turns them off).
REFRESH = 30


def _basic_auth_user(request: HttpRequest) -> Any:
    """Return the user named by valid HTTP Basic credentials, None if there are none or they fail."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        username, sep, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not sep:
        return None
    return authenticate(request, username=username, password=password)


@admin.register(Stats)
class StatsAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # not subscriptable at run time
    """The cache-statistics page and its actions (``Stats`` has no table)."""

    # -- permissions: the two of the Stats model, nothing else ---------------------

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm(VIEW))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm(CHANGE))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # -- URLs ----------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        def wrap(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
            return self.admin_site.admin_view(view)

        page = wrap(self.stats_view)
        action = {
            name: wrap(require_POST(self._changing(getattr(self, f"{name}_view"))))
            for name in ("flush", "replay", "purge", "invalidate", "reset")
        }

        def entry(request: HttpRequest) -> HttpResponseBase:
            # A scraper authenticates with Basic credentials on each request; everyone
            # else goes through the admin's session login.
            if request.GET.get("format") in {"json", "prometheus"} and "HTTP_AUTHORIZATION" in request.META:
                return require_GET(self._machine_view)(request)
            return page(request)

        info = self.opts.app_label, self.opts.model_name
        return [
            path("", entry, name="{}_{}_changelist".format(*info)),
            path("flush/", action["flush"], name="{}_{}_flush".format(*info)),
            path("dead-letters/replay/", action["replay"], name="{}_{}_replay".format(*info)),
            path("dead-letters/purge/", action["purge"], name="{}_{}_purge".format(*info)),
            path("invalidate/", action["invalidate"], name="{}_{}_invalidate".format(*info)),
            path("reset/", action["reset"], name="{}_{}_reset".format(*info)),
        ]

    def _changing(
        self, view: Callable[[HttpRequest], HttpResponseBase]
    ) -> Callable[[HttpRequest], HttpResponseBase]:
        """Return ``view`` refusing users without the change permission before it reads anything."""

        def guarded(request: HttpRequest) -> HttpResponseBase:
            if not self.has_change_permission(request):
                raise PermissionDenied
            return view(request)

        return guarded

    def _url(self, name: str) -> str:
        return reverse(f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{name}")

    # -- the page ----------------------------------------------------------------------

    def _machine_view(self, request: HttpRequest) -> HttpResponseBase:
        user = _basic_auth_user(request)
        if user is None or not (user.is_active and user.is_staff):
            response = HttpResponse("Authentication required.\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Basic realm="cachepatterns"'
            return response
        if not user.has_perm(VIEW):
            raise PermissionDenied
        return self._render_machine(request.GET["format"])

    @staticmethod
    def _render_machine(fmt: str) -> HttpResponse:
        report = stats.report()
        if fmt == "json":
            return JsonResponse(report, json_dumps_params={"indent": 2})
        return HttpResponse(prometheus.render(report), content_type=prometheus.CONTENT_TYPE)

    def stats_view(self, request: HttpRequest) -> HttpResponseBase:
        """Show the page, or the report as JSON or Prometheus text (``?format=``)."""
        return require_GET(self._stats_view)(request)

    def _stats_view(self, request: HttpRequest) -> HttpResponseBase:
        if not self.has_view_permission(request):
            raise PermissionDenied
        fmt = request.GET.get("format")
        if fmt in {"json", "prometheus"}:
            return self._render_machine(fmt)
        report = stats.report()
        try:
            refresh = max(0, int(request.GET.get("refresh", REFRESH)))
        except ValueError:
            refresh = REFRESH
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "title": "Cache statistics",
            "report": report,
            "rows": _rows(report),
            "durations": report["durations"],
            "charts": _charts(report),
            "refresh": refresh,
            "can_change": self.has_change_permission(request),
            "model_form": ModelForm(),
            "family_form": FamilyForm(),
            "events_help": stats.EVENTS,
            "durations_help": stats.DURATIONS,
            "urls": {name: self._url(name) for name in ("flush", "replay", "purge", "invalidate", "reset")},
            "json_url": "?format=json",
            "prometheus_url": "?format=prometheus",
            "report_json": json.dumps(report, indent=2, default=str),
        }
        return TemplateResponse(request, "admin/cachepatterns_app/stats/page.html", context)

    # -- actions -----------------------------------------------------------------------

    def _act(
        self,
        request: HttpRequest,
        *,
        question: str,
        detail: str,
        perform: Callable[[], str],
        fields: dict[str, Any] | None = None,
    ) -> HttpResponseBase:
        """Confirm, then run ``perform`` (its return is the success message), then go back."""
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "app_label": self.opts.app_label,
                "title": "Are you sure?",
                "question": question,
                "detail": detail,
                "action_url": request.path,
                # Repeated as hidden inputs, so that "yes" posts the same request again.
                "fields": [
                    (name, value)
                    for name, values in (fields or {}).items()
                    for value in (values if isinstance(values, list) else [values])
                ],
                "back_url": self._url("changelist"),
            }
            return TemplateResponse(request, "admin/cachepatterns_app/stats/confirm.html", context)
        try:
            messages.success(request, perform())
        except CachePatternsError as e:
            messages.error(request, f"Nothing was done: {e}")
        return HttpResponseRedirect(self._url("changelist"))

    def flush_view(self, request: HttpRequest) -> HttpResponseBase:
        """Flush every queued write-behind write to the database now."""
        pending = _pending_writes()

        def perform() -> str:
            written = write_behind.flush(wait=True)
            left = _pending_writes()
            return f"Flushed write-behind: {written} row(s) written to the database; {left} write(s) pending."

        return self._act(
            request,
            question="Flush the write-behind queue to the database now?",
            detail=f"{pending} write(s) are pending." if pending is not None else "",
            perform=perform,
        )

    def _dead_letter_ids(self, request: HttpRequest) -> list[str] | None:
        if request.POST.get("all") == "yes":
            return None
        ids = [i for i in request.POST.getlist("ids") if i]
        if not ids:
            raise _NothingSelected
        return ids

    def _dead_letters(
        self, request: HttpRequest, verb: str, run: Callable[[list[str] | None], int]
    ) -> HttpResponseBase:
        try:
            ids = self._dead_letter_ids(request)
        except _NothingSelected:
            messages.warning(request, f"Select dead letters to {verb}, or choose {verb} all.")
            return HttpResponseRedirect(self._url("changelist"))
        fields: dict[str, Any] = {"all": "yes"} if ids is None else {"ids": ids}
        which = "every dead letter" if ids is None else f"{len(ids)} dead letter(s)"
        return self._act(
            request,
            question=f"{verb.capitalize()} {which}?",
            detail=(
                "Replayed writes are queued again and flushed like new ones."
                if verb == "replay"
                else "Purged writes are deleted for good: their rows keep the database's values."
            ),
            perform=lambda: f"{_PAST[verb]} {run(ids)} dead letter(s).",
            fields=fields,
        )

    def replay_view(self, request: HttpRequest) -> HttpResponseBase:
        """Queue dead letters again (``ids``, or ``all=yes``)."""
        return self._dead_letters(request, "replay", write_behind.replay)

    def purge_view(self, request: HttpRequest) -> HttpResponseBase:
        """Delete dead letters (``ids``, or ``all=yes``)."""
        return self._dead_letters(request, "purge", write_behind.purge)

    def invalidate_view(self, request: HttpRequest) -> HttpResponseBase:
        """Invalidate a model's rows (some or all) or one family."""
        form: ModelForm | FamilyForm = (
            FamilyForm(request.POST) if request.POST.get("kind") == "family" else ModelForm(request.POST)
        )
        if not form.is_valid():
            errors = "; ".join(f"{k}: {' '.join(str(e) for e in v)}" for k, v in form.errors.items())
            messages.error(request, f"Nothing was invalidated: {errors}")
            return HttpResponseRedirect(self._url("changelist"))
        return self._act(
            request,
            question=form.question(),
            detail=form.detail(),
            perform=form.perform,
            fields={k: v for k, v in request.POST.items() if k not in {"csrfmiddlewaretoken", "confirm"}},
        )

    def reset_view(self, request: HttpRequest) -> HttpResponseBase:
        """Forget every statistic (all processes), the history with them."""

        def perform() -> str:
            stats.reset()
            return "Statistics reset: every counter, duration and the history start from zero."

        return self._act(
            request,
            question="Reset the cache statistics?",
            detail="Every counter and duration of every process, and the last hour's history, start again "
            "from zero. Prometheus sees its counters reset.",
            perform=perform,
        )


_PAST = {"replay": "Replayed", "purge": "Purged"}


class _NothingSelected(Exception):
    pass


def _pending_writes() -> int | None:
    try:
        return sum(int(m.get("pending") or 0) for m in write_behind.status().get("models") or [])
    except CachePatternsError:
        return None


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the table rows: one per label, counters in the page's column order."""
    out = []
    for label, row in report["labels"].items():
        events = row["events"]
        out.append(
            {
                "label": label,
                "kind": row["kind"],
                "pattern": row["pattern"],
                "hit_rate": row["hit_rate"],
                "cells": [events.get(e, 0) for e in _COLUMNS],
                "refreshes": sum(events.get(e, 0) for e in metrics.REFRESH_EVENTS if e != "stale_served"),
                "other": {
                    e: n for e, n in events.items() if e not in _COLUMNS and not e.startswith("refresh_")
                },
            }
        )
    return out


#: The counters with a column of their own on the page.
_COLUMNS = ("hit", "miss", "fill", "wait", "stale_refused", "stale_served", "invalidation", "degraded")


def _charts(report: dict[str, Any]) -> dict[str, Any]:
    history = report["history"]
    return {
        "hit_rate": line_chart(
            [None if v is None else 100 * v for v in history["hit_rate"]],
            title="Hit rate per minute, last hour",
            y_max=100,
            y_format=lambda v: f"{v:.0f} %",
            css_class="cp-hit-rate",
        ),
        "queue_depth": line_chart(
            history["queue_depth"], title="Write-behind queue depth, last hour", css_class="cp-queue-depth"
        ),
    }
