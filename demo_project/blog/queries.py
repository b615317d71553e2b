"""
The blog's cached queries.

Each author's pages of posts form one family, ``author:{author_id}:posts``: when
a post of that author is created, edited, deleted or moved to another author,
every cached page of the family is invalidated at once, after commit, by
bumping the family's generation (one Redis command, however many pages).
"""

from __future__ import annotations

from typing import Any

from cachepatterns_app import cache_aside
from demo_project.blog.models import Post

__all__ = ["author_post_count", "author_posts"]


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
