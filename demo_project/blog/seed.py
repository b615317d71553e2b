"""
The demo's data: three authors with profiles and 25 posts each, created when
missing; the restore at the end of ``cachepatterns_demo`` that puts back what the
story changed; and the reset at its start, for a run that was interrupted before
its restore. Together they make every run tell the same story.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone
from django_redis import get_redis_connection

from cachepatterns_app import invalidate, invalidate_family
from cachepatterns_app.conf import get_settings
from cachepatterns_app.identity import database_identity
from cachepatterns_app.keys import model_label, row_keys
from demo_project.blog.models import Author, Post, Profile

__all__ = [
    "DEMO_TITLE",
    "FAMILY",
    "POSTS_PER_AUTHOR",
    "SEED",
    "Seeded",
    "reset_demo",
    "restore_demo",
    "seed_blog",
]

SEED = [
    {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "slug": "ada-lovelace",
        "bio": "Wrote the first published algorithm for a machine.",
        "headline": "Analyst of the Analytical Engine",
        "website": "https://example.com/ada",
    },
    {
        "name": "Grace Hopper",
        "email": "grace@example.com",
        "slug": "grace-hopper",
        "bio": "Built the first compiler and popularised 'debugging'.",
        "headline": "Compiler pioneer",
        "website": "https://example.com/grace",
    },
    {
        "name": "Alan Turing",
        "email": "alan@example.com",
        "slug": "alan-turing",
        "bio": "Defined computability; broke Enigma.",
        "headline": "Machines can think?",
        "website": "https://example.com/alan",
    },
]
POSTS_PER_AUTHOR = 25
# Posts the demo writes carry this title prefix so the next run can remove them.
DEMO_TITLE = "[demo] "
FAMILY = "author:{author_id}:posts"


@dataclass
class Seeded:
    authors: list[Author]
    created_authors: int
    created_posts: int


def seed_blog() -> Seeded:
    """Create the seed authors, profiles and posts that are missing."""
    created_authors = created_posts = 0
    authors = []
    now = timezone.now()
    with transaction.atomic():
        for i, data in enumerate(SEED):
            author = Author.objects.filter(slug=data["slug"]).first()
            if author is None:
                author = Author.objects.create(
                    name=data["name"], email=data["email"], slug=data["slug"], bio=data["bio"]
                )
                created_authors += 1
            if not Profile.objects.filter(author=author).exists():
                Profile.objects.create(author=author, headline=data["headline"], website=data["website"])
            have = Post.objects.filter(author=author).exclude(title__startswith=DEMO_TITLE).count()
            # One a day, newest first, so that pages have a stable order.
            Post.objects.bulk_create(
                Post(
                    author=author,
                    title=f"{data['name'].split()[0]}'s post #{n}",
                    body=f"Post number {n} by {data['name']}.",
                    created_at=now - datetime.timedelta(days=POSTS_PER_AUTHOR - n, minutes=i),
                )
                for n in range(have + 1, POSTS_PER_AUTHOR + 1)
            )
            created_posts += max(0, POSTS_PER_AUTHOR - have)
            authors.append(author)
    return Seeded(authors, created_authors, created_posts)


def reset_demo(authors: list[Author]) -> int:
    """Undo what earlier demo runs changed, forget the authors' cached entries; return posts removed."""
    first = authors[0]
    Author.objects.filter(pk=first.pk).exclude(name=SEED[0]["name"]).update(name=SEED[0]["name"])
    first.name = SEED[0]["name"]
    removed, _ = Post.objects.filter(title__startswith=DEMO_TITLE).delete()
    pks = [a.pk for a in authors]
    profiles = list(Profile.objects.filter(author__in=pks).values_list("pk", flat=True))
    # The public invalidation API, not a key scan: rows by primary key, and each
    # author's pages with one generation bump per family.
    invalidate(Author, *pks)
    invalidate(Profile, *profiles)
    for pk in pks:
        invalidate_family(FAMILY, author_id=pk)
    # A write-through row's version key outlives the database it was read from (a
    # recreated SQLite file, another DATABASE_URL on the same Redis). One ahead of
    # the row would make Redis refuse every fill and put of that row, so drop them;
    # safe here because nothing else writes these rows while the demo resets.
    if profiles:
        redis = get_redis_connection(get_settings().cache_alias)
        redis.delete(
            *[
                row_keys(model_label(Profile), database_identity(DEFAULT_DB_ALIAS), pk).version
                for pk in profiles
            ]
        )
    return int(removed)


def restore_demo(author: Author) -> str:
    """
    Put back what the story changed — the first author's name, her profile's headline,
    the posts it wrote — through the ORM, so that the cache is invalidated (or, for the
    write-through profile, refreshed) like for any other write. Return what was done.
    """
    data = SEED[0]
    with transaction.atomic():
        author.name = data["name"]
        author.save(update_fields=["name"])
        profile = Profile.objects.get(author=author)
        profile.headline = data["headline"]
        profile.save()
        removed, _ = Post.objects.filter(title__startswith=DEMO_TITLE).delete()
    return (
        f"name {data['name']!r} and headline {data['headline']!r} restored, "
        f"{removed} demo post(s) deleted — each write invalidated (or re-put) its cached entries"
    )
