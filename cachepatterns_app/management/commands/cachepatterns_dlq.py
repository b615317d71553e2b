"""
``manage.py cachepatterns_dlq {list,replay,purge}``: the write-behind writes given
up after ``MAX_RETRIES`` (dead letters).

    manage.py cachepatterns_dlq list [--limit N] [--json]
    manage.py cachepatterns_dlq replay ID… | --all      queue them again
    manage.py cachepatterns_dlq purge ID… | --all       delete them for good
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cachepatterns_app.exceptions import CachePatternsError
from cachepatterns_app.patterns.write_behind import operations


class Command(BaseCommand):
    help = "List, replay or purge write-behind dead letters."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="{list,replay,purge}")
        listing = sub.add_parser("list", help="Show the dead letters.")
        listing.add_argument("--limit", type=int, default=100, help="At most this many (default 100).")
        listing.add_argument("--json", action="store_true", help="Print JSON.")
        for name, verb in (("replay", "Queue again"), ("purge", "Delete for good")):
            action = sub.add_parser(name, help=f"{verb} the dead letters named (or --all).")
            action.add_argument("ids", nargs="*", help="dead-letter ids (from list)")
            action.add_argument("--all", action="store_true", help="every dead letter")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "list":
                self._list(options["limit"], options["json"])
                return
            if bool(options["ids"]) == bool(options["all"]):
                raise CommandError("Name dead-letter ids, or give --all (not both).")
            ids = None if options["all"] else list(options["ids"])
            run = operations.replay if options["action"] == "replay" else operations.purge
            n = run(ids)
        except CachePatternsError as e:
            raise CommandError(f"Dead letters unavailable: {e}") from e
        done = "Replayed" if options["action"] == "replay" else "Purged"
        self.stdout.write(f"{done} {n} dead letter(s).")

    def _list(self, limit: int, as_json: bool) -> None:
        if limit < 1:
            raise CommandError("--limit must be at least 1.")
        letters = operations.dead_letters(limit)
        if as_json:
            self.stdout.write(json.dumps(letters, indent=2, default=str))
            return
        if not letters:
            self.stdout.write("No dead letters.")
            return
        for d in letters:
            self.stdout.write(
                f"{d.get('id')}  {d.get('label')} pk={d.get('pk')}  attempts={d.get('attempts')}  "
                f"at={d.get('at')}  {d.get('error')}"
            )
