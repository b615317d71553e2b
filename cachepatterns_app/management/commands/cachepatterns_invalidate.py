"""
``manage.py cachepatterns_invalidate``: drop cached rows or whole families by hand,
after raw SQL or a data fix the app could not see.

    manage.py cachepatterns_invalidate blog.Author 1 2 3
    manage.py cachepatterns_invalidate --family "author:{author_id}:posts" author_id=7

A family template that no ``@cache_aside`` function declared in this process uses
(a typo, most likely) is still invalidated — the function may live in a module this
process never imports — but a warning on stderr names the known families, so a
mistyped template does not pass for success.
"""

from __future__ import annotations

import difflib
import string
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cachepatterns_app.catalog import family_templates
from cachepatterns_app.invalidation import pending_retries
from cachepatterns_app.operations import invalidate, invalidate_family
from cachepatterns_app.registry import row_cache_for


class Command(BaseCommand):
    help = "Invalidate cached rows (MODEL PK...) or a family (--family TEMPLATE name=value...)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("target", help="app_label.Model, or with --family the parameters name=value")
        parser.add_argument("values", nargs="*", help="primary keys, or more name=value parameters")
        parser.add_argument("--family", help="a family template, e.g. 'author:{author_id}:posts'")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["family"]:
            params = {}
            for item in [options["target"], *options["values"]]:
                name, sep, value = item.partition("=")
                if not sep:
                    raise CommandError(f"Family parameters are name=value pairs; got {item!r}.")
                params[name] = value
            self._warn_if_unknown(options["family"], params)
            try:
                invalidate_family(options["family"], **params)
            except (TypeError, ValueError) as e:
                raise CommandError(str(e)) from e
            self._report(f"family {options['family']!r} for {params}")
            return
        try:
            model = apps.get_model(options["target"])
        except (LookupError, ValueError) as e:
            raise CommandError(f"{options['target']!r} is not a model (use app_label.Model): {e}") from e
        if row_cache_for(model) is None:
            raise CommandError(
                f"{model._meta.label} is not cached (no CacheAsideManager/WriteThroughManager)."
            )
        if not options["values"]:
            raise CommandError("Give at least one primary key.")
        invalidate(model, *options["values"])
        self._report(f"{len(options['values'])} {model._meta.label} row(s)")

    def _warn_if_unknown(self, template: str, params: dict[str, str]) -> None:
        known = family_templates()
        if template not in known:
            close = difflib.get_close_matches(template, sorted(known), n=1)
            listing = ", ".join(repr(t) for t in sorted(known)) or "none"
            self.stderr.write(
                f"Warning: no @cache_aside function declared in this process uses the family "
                f"{template!r}, so this invalidates nothing it caches."
                + (f" Did you mean {close[0]!r}?" if close else "")
                + f" Known families: {listing}. (A function whose module this process does not "
                "import is not known here: import it from an AppConfig.ready().)"
            )
            return
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field}
        extra = sorted(set(params) - fields)
        if extra:
            self.stderr.write(
                f"Warning: the family {template!r} does not use {', '.join(extra)}; "
                f"its parameters are {', '.join(sorted(fields)) or 'none'}."
            )

    def _report(self, what: str) -> None:
        if pending_retries():
            raise CommandError(
                f"Redis is unavailable: the invalidation of {what} is recorded and will be sent "
                "by the cachepatterns.retry_invalidations task once Redis answers."
            )
        self.stdout.write(f"Invalidated {what}.")
