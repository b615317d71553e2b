"""
Show what the cache did for each request, in response headers::

    X-Cache-Hits: 2
    X-Cache-Misses: 0
    X-SQL-Queries: 0

The cache counts come from this process's statistics (``stats.local_counts()``),
so with concurrent requests in one process (threaded ``runserver``) a header may
include another request's events. It is a demo aid, not a metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import connection
from django.http import HttpRequest, HttpResponse

from demo_project.blog.measure import event_totals

__all__ = ["CacheReportMiddleware"]


class _QueryCounter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


class CacheReportMiddleware:
    """Add X-Cache-Hits, X-Cache-Misses and X-SQL-Queries to every response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        before = event_totals()
        counter = _QueryCounter()
        # An execute wrapper counts queries whatever DEBUG is (connection.queries needs DEBUG).
        with connection.execute_wrapper(counter):
            response = self.get_response(request)
        after = event_totals()
        response["X-Cache-Hits"] = str(after.get("hit", 0) - before.get("hit", 0))
        response["X-Cache-Misses"] = str(after.get("miss", 0) - before.get("miss", 0))
        response["X-SQL-Queries"] = str(counter.count)
        return response
