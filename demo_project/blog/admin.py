"""Django admin for the demo blog; its writes go through the same invalidation as the views."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import models

from demo_project.blog.models import Author, Post, Profile

__all__ = ["AuthorAdmin", "PostAdmin", "ProfileAdmin"]


# Explicit, so the forms behave the same on Django 5.2 and 6.x (whose default changed).
URL_FIELDS: dict[type[models.Field[Any, Any]], dict[str, Any]] = {models.URLField: {"assume_scheme": "https"}}


class ProfileInline(admin.StackedInline):  # type: ignore[type-arg]  # not subscriptable at run time
    model = Profile
    formfield_overrides = URL_FIELDS
    can_delete = False
    readonly_fields = ["version"]


@admin.register(Author)
class AuthorAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "email", "slug", "joined"]
    search_fields = ["name", "email"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [ProfileInline]


@admin.register(Post)
class PostAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["title", "author", "created_at"]
    list_select_related = ["author"]
    list_filter = ["author"]
    search_fields = ["title"]
    date_hierarchy = "created_at"


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["author", "headline", "website", "version"]
    list_select_related = ["author"]
    formfield_overrides = URL_FIELDS
    readonly_fields = ["version"]
