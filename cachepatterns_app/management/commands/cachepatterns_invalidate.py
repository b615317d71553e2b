"""
``manage.py cachepatterns_invalidate``: drop cached rows or whole families by hand,
after raw SQL or a data fix the app could not see.

    manage.py cachepatterns_invalidate blog.Author 1 2 3
    manage.py cachepatterns_invalidate --family "author:{author_id}:posts" author_id=7
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

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

    def _report(self, what: str) -> None:
        if pending_retries():
            raise CommandError(
                f"Redis is unavailable: the invalidation of {what} is recorded and will be sent "
                "by the cachepatterns.retry_invalidations task once Redis answers."
            )
        self.stdout.write(f"Invalidated {what}.")
