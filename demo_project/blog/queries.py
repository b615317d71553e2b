"""
The blog's cached queries.

Each author's pages of posts form one family, ``author:{author_id}:posts``: when
a post of that author is created, edited, deleted or moved to another author,
every cached page of the family is invalidated at once, after commit, by
bumping the family's generation (one Redis command, however many pages).

The trending posts are expensive to compute and read on every page view, so they
are refreshed ahead: a read in the last half of their short TTL returns the
cached ranking and has a Celery worker compute the next one.
"""

from __future__ import annotations

import time
from typing import Any

from django.db.models import Count, OuterRef, Subquery
from django.utils import timezone

from cachepatterns_app import cache_aside, refresh_ahead
from demo_project.blog.models import Post

__all__ = ["TRENDING_COST", "TRENDING_TTL", "author_post_count", "author_posts", "trending_posts"]

#: Seconds the trending ranking stays cached; it is recomputed in the background
#: during the last half of them.
TRENDING_TTL = 2
#: Seconds the ranking query stands for: on a real blog it aggregates a large table.
TRENDING_COST = 0.2


@cache_aside(
    key="author:{author_id}:posts:page:{page}:size:{per_page}",
    ttl=900,
    family="author:{author_id}:posts",
    depends_on={Post: "author_id"},
)
def author_posts(author_id: int, page: int = 1, per_page: int = 10) -> Any:
    """Return page ``page`` of the author's posts, newest first."""
    start = (page - 1) * per_page
    # "-id" breaks ties between posts created in the same instant: a page must
    # hold the same rows every time it is computed.
    return Post.objects.filter(author_id=author_id).order_by("-created_at", "-id")[start : start + per_page]


@cache_aside(
    key="author:{author_id}:posts:count",
    ttl=900,
    family="author:{author_id}:posts",
    depends_on={Post: "author_id"},
)
def author_post_count(author_id: int) -> int:
    """Return how many posts the author has (for the pager; same family as the pages)."""
    return int(Post.objects.filter(author_id=author_id).count())


@refresh_ahead(key="trending:posts:top:{limit}", ttl=TRENDING_TTL, factor=0.5)
def trending_posts(limit: int = 5) -> dict[str, Any]:
    """
    Return the trending posts — the newest posts of the most prolific authors — and
    when the ranking was computed (each refresh computes a new one).
    """
    activity = (
        Post.objects.filter(author=OuterRef("author")).values("author").annotate(n=Count("pk")).values("n")
    )
    ranked = (
        Post.objects.annotate(activity=Subquery(activity))
        .select_related("author")
        .order_by("-activity", "-created_at", "-id")[:limit]
    )
    posts = [
        {"id": post.pk, "title": post.title, "author": post.author.name, "activity": post.activity}
        for post in ranked
    ]
    time.sleep(TRENDING_COST)  # the rest of what a heavy ranking query costs
    return {"computed_at": timezone.now().isoformat(timespec="milliseconds"), "posts": posts}
