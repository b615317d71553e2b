"""
``manage.py cachepatterns_invalidate``: drop cached rows or whole families by hand,
after raw SQL or a data fix the app could not see.

    manage.py cachepatterns_invalidate blog.Author 1 2 3
    manage.py cachepatterns_invalidate blog.Author            # every row, a batch at a time
    manage.py cachepatterns_invalidate --family "author:{author_id}:posts" --param author_id=7
    manage.py cachepatterns_invalidate --family "author:{author_id}:posts" author_id=7

With no primary key every row the database has is invalidated (the database says
which rows there are; Redis is never scanned).

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
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cachepatterns_app.catalog import family_templates
from cachepatterns_app.invalidation import pending_retries
from cachepatterns_app.maintenance import invalidate_all
from cachepatterns_app.operations import invalidate, invalidate_family
from cachepatterns_app.registry import row_cache_for


class Command(BaseCommand):
    help = (
        "Invalidate cached rows (MODEL [PK...]; no PK: every row) or a family "
        "(--family TEMPLATE --param name=value...)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "target", nargs="?", help="app_label.Model, or with --family a parameter name=value"
        )
        parser.add_argument("values", nargs="*", help="primary keys, or more name=value parameters")
        parser.add_argument("--family", help="a family template, e.g. 'author:{author_id}:posts'")
        parser.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a family parameter (repeatable)",
        )
        parser.add_argument("--batch", type=int, default=1000, help="rows per batch for a whole model")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["family"]:
            params = {}
            given = [options["target"], *options["values"]] if options["target"] else list(options["values"])
            for item in [*options["param"], *given]:
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
        if options["param"]:
            raise CommandError("--param goes with --family.")
        if not options["target"]:
            raise CommandError("Name a model (app_label.Model [PK...]) or a family (--family TEMPLATE).")
        try:
            model = apps.get_model(options["target"])
        except (LookupError, ValueError) as e:
            raise CommandError(f"{options['target']!r} is not a model (use app_label.Model): {e}") from e
        if row_cache_for(model) is None:
            raise CommandError(
                f"{model._meta.label} is not cached (no CacheAsideManager/WriteThroughManager)."
            )
        try:
            if not options["values"]:
                done = 0
                for done in invalidate_all(model, batch=options["batch"]):  # noqa: B007 - the last is the total
                    pass
                self._report(f"every {model._meta.label} row ({done} row(s))")
                return
            invalidate(model, *options["values"])
        except (ValueError, ValidationError) as e:
            raise CommandError(f"Not a primary key of {model._meta.label}: {e}") from e
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
