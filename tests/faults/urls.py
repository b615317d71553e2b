"""Two views over cache-aside authors, so fault tests can prove "no 500" through Django's request cycle."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path

from tests.testapp.models import Author


def author(request: HttpRequest, pk: int) -> JsonResponse:
    """GET: the cached author; POST: rename it (the invalidation runs after the commit)."""
    row = Author.objects.get(pk=pk)
    if request.method == "POST":
        row.name = request.POST["name"]
        row.save()
    return JsonResponse({"name": row.name})


def rename_then_fail(request: HttpRequest, pk: int) -> JsonResponse:
    """POST: rename the author, then fail: under ATOMIC_REQUESTS the rename rolls back."""
    row = Author.objects.get(pk=pk)
    row.name = request.POST["name"]
    row.save()
    raise RuntimeError("the view fails after its write")


urlpatterns = [path("author/<int:pk>/", author), path("author/<int:pk>/fail/", rename_then_fail)]
