"""``python -m bench.flush_child NAME``: one flush worker process draining the bench's queue."""

from __future__ import annotations

import sys

import django


def main() -> None:
    django.setup()
    from bench.models import QueuedAuthor
    from cachepatterns_app.patterns.write_behind.flush import flush_model
    from cachepatterns_app.registry import row_cache_for

    cache = row_cache_for(QueuedAuthor)
    while flush_model(cache, "default", consumer=sys.argv[1], max_batches=1).entries:  # type: ignore[arg-type]
        pass


if __name__ == "__main__":
    main()
