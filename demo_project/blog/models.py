"""
The demo blog: authors (cache-aside), their profiles (write-through), posts, and
the posts' view and like counters (write-behind).

``Post`` is not cached row by row; its manager only reports bulk writes, so the
cached pages of posts (``queries.author_posts``) are invalidated by every write
path, not just ``save()``.
"""

from __future__ import annotations

from django.db import models
from django.urls import reverse
from django.utils import timezone

from cachepatterns_app import CacheAsideManager, InvalidatingManager, WriteBehindManager, WriteThroughManager
from cachepatterns_app.models import WriteBehindModel

__all__ = ["Author", "Post", "PostStats", "Profile"]


class Author(models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    slug = models.SlugField(unique=True)
    bio = models.TextField(blank=True, default="")
    joined = models.DateTimeField(default=timezone.now)

    # get(pk=…), get(email=…) and get(slug=…) are served from Redis.
    objects = CacheAsideManager(ttl=3600)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("blog:author", args=[self.pk])


class Profile(models.Model):
    author = models.OneToOneField(Author, on_delete=models.CASCADE, related_name="profile")
    website = models.URLField(blank=True, default="")
    headline = models.CharField(max_length=200, blank=True, default="")
    # Incremented by every write; orders concurrent writers' puts (write-through).
    version = models.PositiveBigIntegerField(default=0, editable=False)

    objects = WriteThroughManager(ttl=3600)

    def __str__(self) -> str:
        return self.headline or f"Profile #{self.pk}"


class Post(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="posts")
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    # A default rather than auto_now_add, so the seed can spread posts over time.
    created_at = models.DateTimeField(default=timezone.now)

    objects = InvalidatingManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        # The author's pages are read newest first: one index serves filter and order.
        indexes = [models.Index(fields=["author", "-created_at", "-id"], name="blog_post_author_recent")]

    def __str__(self) -> str:
        return self.title


class PostStats(WriteBehindModel):
    """A post's counters: counted in Redis at once (incr), in the database after the flush."""

    # The post's own key: known before the insert, so the row is created write-behind too.
    post = models.OneToOneField(Post, on_delete=models.CASCADE, primary_key=True, related_name="stats")
    views = models.PositiveIntegerField(default=0)
    likes = models.PositiveIntegerField(default=0)

    objects = WriteBehindManager(ttl=3600)

    def __str__(self) -> str:
        return f"{self.views} views, {self.likes} likes"
