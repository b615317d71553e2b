"""
Views of the demo blog.

- the author page reads the author with ``Author.objects.get(pk=…)`` (cache-aside)
  and the profile with ``Profile.objects.get(author_id=…)`` (write-through): after
  the first request it costs no SQL query;
- the author's posts page reads ``queries.author_posts`` (a cached family of pages);
- creating a post invalidates every cached page of its author after commit;
- editing a profile puts the fresh row in the cache after commit;
- the trending page reads ``queries.trending_posts`` (refresh-ahead: with a Celery
  worker running, it is recomputed in the background before it expires).
"""

from __future__ import annotations

import math

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from cachepatterns_app import stats
from cachepatterns_app.exceptions import CacheUnavailable
from demo_project.blog.forms import PostForm, ProfileForm
from demo_project.blog.models import Author, Profile
from demo_project.blog.queries import TRENDING_TTL, author_post_count, author_posts, trending_posts

__all__ = ["author_detail", "author_posts_page", "edit_profile", "home", "new_post", "stats_page", "trending"]

PER_PAGE = 10


def _author(pk: int) -> Author:
    try:
        author: Author = Author.objects.get(pk=pk)
    except Author.DoesNotExist:
        raise Http404("No such author") from None
    return author


def _profile(author: Author) -> Profile | None:
    try:
        profile: Profile = Profile.objects.get(author_id=author.pk)
    except Profile.DoesNotExist:
        return None
    return profile


def home(request: HttpRequest) -> HttpResponse:
    """List the authors (a plain query: lists are not what this page demonstrates)."""
    return render(request, "blog/home.html", {"authors": Author.objects.order_by("name")})


def author_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Show an author and their profile, both from the cache after the first request."""
    author = _author(pk)
    return render(request, "blog/author_detail.html", {"author": author, "profile": _profile(author)})


def author_posts_page(request: HttpRequest, pk: int) -> HttpResponse:
    """Show one page of an author's posts, served from the author's family of pages."""
    author = _author(pk)
    try:
        page = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        page = 1
    pages = max(1, math.ceil(author_post_count(author_id=author.pk) / PER_PAGE))
    page = min(page, pages)
    posts = author_posts(author_id=author.pk, page=page, per_page=PER_PAGE)
    return render(
        request,
        "blog/author_posts.html",
        {
            "author": author,
            "posts": posts,
            "page": page,
            "pages": pages,
            "first_number": (page - 1) * PER_PAGE + 1,
            "previous": page - 1 if page > 1 else None,
            "next": page + 1 if page < pages else None,
        },
    )


@require_http_methods(["GET", "POST"])
def new_post(request: HttpRequest, pk: int) -> HttpResponse:
    """Create a post for the author; their cached pages are invalidated after commit."""
    author = _author(pk)
    form = PostForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        post = form.save(commit=False)
        post.author = author
        post.save()
        messages.success(request, f"Post “{post.title}” created; {author}'s cached pages were invalidated.")
        return redirect("blog:author_posts", pk=author.pk)
    return render(request, "blog/post_form.html", {"author": author, "form": form})


@require_http_methods(["GET", "POST"])
def edit_profile(request: HttpRequest, pk: int) -> HttpResponse:
    """Edit the author's profile; the fresh row is put in the cache after commit."""
    author = _author(pk)
    profile = _profile(author) or Profile(author=author)
    form = ProfileForm(request.POST or None, instance=profile)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Profile saved; the next read is a cache hit with the new values.")
        return redirect("blog:author", pk=author.pk)
    return render(request, "blog/profile_form.html", {"author": author, "form": form})


def trending(request: HttpRequest) -> HttpResponse:
    """Show the trending posts (refresh-ahead)."""
    ranking = trending_posts(limit=5)
    return render(request, "blog/trending.html", {"ranking": ranking, "ttl": TRENDING_TTL})


#: The events with a column of their own on the stats page, in reading order; the
#: others (rare, mostly failures) share one "other" column, listed only when not zero.
#: Thirteen columns do not fit a laptop screen; these do, with the hit ratio fourth.
STATS_COLUMNS = ("hit", "miss", "fill", "wait", "invalidation", "put")


def stats_page(request: HttpRequest) -> HttpResponse:
    """Show the cache statistics of every process (``stats.snapshot()``)."""
    error = ""
    try:
        snapshot = stats.snapshot()
    except CacheUnavailable as e:
        snapshot, error = {}, str(e)
    others = [e for e in stats.EVENTS if e not in STATS_COLUMNS]
    rows = []
    for label, counts in sorted(snapshot.items()):
        hits, misses = counts.get("hit", 0), counts.get("miss", 0)
        rows.append(
            {
                "label": label,
                "hits": hits,
                "misses": misses,
                "ratio": f"{100 * hits / (hits + misses):.1f} %" if hits + misses else "-",
                "counts": [counts.get(e, 0) for e in STATS_COLUMNS[2:]],
                "other": [(e, counts[e], stats.EVENTS[e]) for e in others if counts.get(e)],
            }
        )
    return render(
        request,
        "blog/stats.html",
        {
            "hit": stats.EVENTS["hit"],
            "miss": stats.EVENTS["miss"],
            "columns": [(e, stats.EVENTS[e]) for e in STATS_COLUMNS[2:]],
            "descriptions": stats.EVENTS,
            "rows": rows,
            "error": error,
        },
    )
