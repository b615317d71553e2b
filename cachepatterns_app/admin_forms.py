"""
The invalidation forms of the admin page: a cached model (some rows or all), or a
family the process declared with its parameters.

Everything the user types reaches Redis only through the app's own key functions
(``invalidate`` → ``keys.row_keys``; ``invalidate_family`` → ``Family.bump``), which
canonicalise primary keys and normalise or hash family parameters: a key cannot
be spelled from the form.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.apps import apps

from cachepatterns_app.catalog import family_templates
from cachepatterns_app.exceptions import CachePatternsError
from cachepatterns_app.families import Family
from cachepatterns_app.invalidation import pending_retries
from cachepatterns_app.maintenance import invalidate_all, remaining
from cachepatterns_app.operations import invalidate, invalidate_family
from cachepatterns_app.registry import row_caches

__all__ = ["FamilyForm", "ModelForm", "parse_params"]

#: Most primary keys one form may name (a whole model: leave the field empty).
MAX_PKS = 10_000


def _cached_models() -> list[tuple[str, str]]:
    labels = sorted({m._meta.label for m in row_caches() if not m._meta.proxy and not m._meta.abstract})
    return [(label, label) for label in labels]


def parse_params(text: str) -> dict[str, str]:
    """Return ``name=value`` lines (or comma-separated pairs) as a dict; raise ``ValueError``."""
    params: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in re.split(r"[\n,]", text))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"parameters are name=value pairs; got {item!r}")
        params[name.strip()] = value.strip()
    return params


def _outcome(what: str) -> str:
    if pending_retries():
        return (
            f"Redis is unavailable: the invalidation of {what} is recorded and will be sent by the "
            "cachepatterns.retry_invalidations task once Redis answers."
        )
    return f"Invalidated {what}."


class ModelForm(forms.Form):
    """Invalidate rows of a cached model: the primary keys given, or every row."""

    kind = forms.CharField(widget=forms.HiddenInput, initial="model")
    model = forms.ChoiceField(choices=())
    pks = forms.CharField(
        required=False,
        label="Primary keys",
        help_text="Separated by spaces or commas; empty: every row of the model (in batches).",
        widget=forms.TextInput(attrs={"size": 30}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = _cached_models()  # type: ignore[attr-defined]

    def clean_pks(self) -> list[str]:
        pks = [p for p in re.split(r"[\s,]+", self.cleaned_data.get("pks") or "") if p]
        if len(pks) > MAX_PKS:
            raise forms.ValidationError(f"At most {MAX_PKS} primary keys; leave it empty for every row.")
        return pks

    @property
    def target(self) -> Any:
        return apps.get_model(self.cleaned_data["model"])

    def question(self) -> str:
        pks = self.cleaned_data["pks"]
        label = self.cleaned_data["model"]
        if pks:
            return f"Invalidate {len(pks)} cached {label} row(s)?"
        return f"Invalidate every cached {label} row?"

    def detail(self) -> str:
        if self.cleaned_data["pks"]:
            return "The next read of each loads it from the database."
        return (
            f"The database has {remaining(self.target)} {self.cleaned_data['model']} rows; each one's cached "
            "copy is deleted, a batch at a time. The next read of each loads it from the database."
        )

    def perform(self) -> str:
        model, pks = self.target, self.cleaned_data["pks"]
        if pks:
            invalidate(model, *pks)
            return _outcome(f"{len(pks)} {model._meta.label} row(s)")
        done = 0
        for done in invalidate_all(model):  # noqa: B007 - the count of the last batch is the total
            pass
        return _outcome(f"every {model._meta.label} row ({done} row(s))")


class FamilyForm(forms.Form):
    """Invalidate one family (a template declared with ``@cache_aside(family=…)``)."""

    kind = forms.CharField(widget=forms.HiddenInput, initial="family")
    family = forms.ChoiceField(choices=())
    params = forms.CharField(
        label="Parameters",
        required=False,
        help_text="name=value, separated by commas, e.g. author_id=7",
        widget=forms.TextInput(attrs={"size": 30}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["family"].choices = [(t, t) for t in sorted(family_templates())]  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        template = data.get("family")
        if not template:
            return data
        try:
            params = parse_params(data.get("params") or "")
        except ValueError as e:
            raise forms.ValidationError(str(e)) from e
        needed = set(Family(template).fields)
        if set(params) != needed:
            raise forms.ValidationError(
                f"{template!r} takes exactly {', '.join(sorted(needed)) or 'no parameters'}; "
                f"got {', '.join(sorted(params)) or 'none'}."
            )
        data["parsed"] = params
        return data

    def question(self) -> str:
        return f"Invalidate the family {self.cleaned_data['family']!r} for {self.cleaned_data['parsed']}?"

    def detail(self) -> str:
        return "Every cached member (every page) of that family is dropped at once: one generation bump."

    def perform(self) -> str:
        template, params = self.cleaned_data["family"], self.cleaned_data["parsed"]
        try:
            invalidate_family(template, **params)
        except (TypeError, ValueError) as e:
            raise CachePatternsError(str(e)) from e
        return _outcome(f"family {template!r} for {params}")
