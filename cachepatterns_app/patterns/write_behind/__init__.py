"""
Write-behind: a save returns once the row is in Redis and its write is queued
durably (a Redis Stream per model); Celery flushes the queue to the database in
batches. See ``operations`` for what the admin page and the commands call.
"""
