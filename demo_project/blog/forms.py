"""Forms of the demo blog."""

from __future__ import annotations

from django import forms

from demo_project.blog.models import Post, Profile

__all__ = ["PostForm", "ProfileForm"]


class PostForm(forms.ModelForm):  # type: ignore[type-arg]  # not subscriptable at run time
    class Meta:
        model = Post
        fields = ["title", "body"]


class ProfileForm(forms.ModelForm):  # type: ignore[type-arg]
    # Explicit, so the form behaves the same on Django 5.2 and 6.x (whose default changed).
    website = forms.URLField(required=False, assume_scheme="https")

    class Meta:
        model = Profile
        fields = ["headline", "website"]
