"""
``manage.py cachepatterns_flush [app.Model] [--no-wait]``: write the queued
write-behind writes (of one model, or all) to the database now, instead of at the
next ``cachepatterns.flush_write_behind`` run.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cachepatterns_app.exceptions import CachePatternsError
from cachepatterns_app.patterns.write_behind import operations


class Command(BaseCommand):
    help = "Flush the write-behind queue (of one model, or all) to the database now."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", nargs="?", help="app_label.Model (default: every write-behind model)")
        parser.add_argument(
            "--no-wait", action="store_true", help="Start the flush and return without waiting for it."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        model = None
        if options["model"]:
            try:
                model = apps.get_model(options["model"])
            except (LookupError, ValueError) as e:
                raise CommandError(f"{options['model']!r} is not a model (use app_label.Model): {e}") from e
        try:
            written = operations.flush(model, wait=not options["no_wait"])
            pending = sum(int(m.get("pending") or 0) for m in operations.status().get("models") or [])
        except CachePatternsError as e:
            raise CommandError(f"Write-behind could not be flushed: {e}") from e
        what = model._meta.label if model is not None else "every write-behind model"
        if options["no_wait"]:
            self.stdout.write(f"Flush of {what} started; {pending} write(s) pending.")
        else:
            self.stdout.write(f"Flushed {what}: {written} row(s) written to the database; {pending} pending.")
