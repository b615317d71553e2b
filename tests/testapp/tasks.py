"""Tasks the suite runs in a real worker process."""

from __future__ import annotations

from celery import shared_task
from django.db import models

from tests.testapp.models import Author


@shared_task(name="tests.rename_author")
def rename_author(pk: int, name: str) -> str:
    author = models.QuerySet(Author).get(pk=pk)
    author.name = name
    author.save()
    return author.name


@shared_task(name="tests.read_author")
def read_author(pk: int) -> str:
    return Author.objects.get(pk=pk).name
