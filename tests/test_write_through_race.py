"""
Write-through under concurrency (issue 4): the cache never ends older than the database.

The interleavings are driven step by step. A writer thread is held inside its
after-commit put (``WriteThroughRowCache._put`` is wrapped with a wait, in that
thread only: Redis and the database stay real), so the test decides in which
order two committed writes reach Redis. A reader thread is held right after the
SELECT that loaded its row, so a writer can commit and put a newer version before
the reader's fill arrives. A control run with the version check taken out of the
put script shows that the interleaving really leaves the older row without it.

The stress tests then run threads of seeded random writes and reads, watched all
along by a monitor thread, and check once everything has landed that every row is
cached as the database holds it, or not at all. ``CP_STRESS_SEED`` changes the seed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from django.conf import settings
from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.models import F

from cachepatterns_app import store as store_module
from cachepatterns_app.keys import model_label
from cachepatterns_app.patterns.write_through import WriteThroughRowCache
from cachepatterns_app.registry import row_cache_for
from cachepatterns_app.store import get_store
from tests.profiles import (
    assert_cached_is_db_or_absent,
    cached,
    cached_entry,
    db_row,
    existing,
    orm,
    state,
)
from tests.support import HeldReader, Worker, keys_of, settle, sqlite_wal, wait_until
from tests.testapp.models import Profile

pytestmark = pytest.mark.django_db(transaction=True)

LABEL = model_label(Profile)

# A put script without the version check: what the library would do without ordering.
PUT_WITHOUT_VERSION_CHECK = """
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('SET', KEYS[3], ARGV[1])
return 1
"""


@pytest.fixture(autouse=True)
def _sqlite_wal() -> Iterator[None]:
    with sqlite_wal():
        yield


# -- helpers ----------------------------------------------------------------------------


class HeldPuts:
    """
    Hold the write-through put of chosen threads until the test releases it.

    The wrapped ``_put`` runs after the writer's commit, so a held thread has
    committed and holds no lock; only its Redis write is pending.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
        self.reached = {name: threading.Event() for name in names}
        self._go = {name: threading.Event() for name in names}
        original = WriteThroughRowCache._put

        def held_put(cache: WriteThroughRowCache, puts: Any) -> None:
            name = threading.current_thread().name
            if name in self.reached:
                self.reached[name].set()
                if not self._go[name].wait(15):
                    raise AssertionError(f"the test never released {name}'s put")
            original(cache, puts)

        monkeypatch.setattr(WriteThroughRowCache, "_put", held_put)

    def wait(self, name: str) -> None:
        assert self.reached[name].wait(15), f"{name} never reached its put"

    def release(self, name: str) -> None:
        self._go[name].set()


def save(pk: Any, name: str) -> None:
    profile = orm().get(pk=pk)
    profile.name = name
    profile.save()


def atomic_save(pk: Any, name: str) -> None:
    with transaction.atomic(), transaction.atomic():
        profile = orm().select_for_update().get(pk=pk)
        profile.name = name
        profile.save()


def partial_save(pk: Any, name: str) -> None:
    profile = orm().get(pk=pk)
    profile.name = name
    profile.save(update_fields=["name"])


WRITES: dict[str, Callable[[Any, str], None]] = {
    "save": save,
    "atomic-save": atomic_save,
    "update_fields": partial_save,
}


def writer(held: HeldPuts, name: str, write: Callable[[], None]) -> Worker:
    """Start ``write`` in thread ``name`` and wait until it has committed and reached its put."""
    worker = Worker(write, name=name)
    worker.start()
    held.wait(name)
    return worker


def make(handle: str = "ann") -> Profile:
    profile: Profile = Profile.objects.create(handle=handle, name="v0")
    return profile


# -- two writers ------------------------------------------------------------------------


@pytest.mark.parametrize("how", list(WRITES))
@pytest.mark.parametrize("order", ["B-put-first", "A-put-first"])
def test_two_writers_leave_the_newer_version_whichever_put_lands_first(
    redis, monkeypatch, counts, django_assert_num_queries, how, order
):
    pk = make().pk
    puts_before = counts(LABEL).get("put", 0)
    held = HeldPuts(monkeypatch, "writer-A", "writer-B")
    a = writer(held, "writer-A", lambda: WRITES[how](pk, "A"))  # commits v1
    b = writer(held, "writer-B", lambda: WRITES[how](pk, "B"))  # commits v2

    row = existing(pk)
    assert (row.name, row.version) == ("B", 2)
    assert cached_entry(redis, pk).version == 0  # neither put has landed yet

    first, second = (b, a) if order == "B-put-first" else (a, b)
    held.release(first.name)
    first.result()
    assert cached_entry(redis, pk).name == first.name[-1]
    held.release(second.name)
    second.result()

    assert state(cached_entry(redis, pk)) == state(row)
    assert redis.get(keys_of(Profile, pk).version) == b"2"
    # Both puts reached Redis; the older one was refused when it came last.
    refused = 1 if order == "B-put-first" else 0
    assert counts(LABEL).get("put", 0) - puts_before == 2 - refused
    assert counts(LABEL).get("stale_refused", 0) == refused
    with django_assert_num_queries(0):
        got = Profile.objects.get(pk=pk)
    assert (got.name, got.version) == ("B", 2)


def test_control_without_the_version_check_the_older_put_lands_last(redis, monkeypatch):
    # put_command() names the script; the store loads its text from this dict.
    monkeypatch.setitem(store_module.SCRIPTS, "put_versioned", PUT_WITHOUT_VERSION_CHECK)
    store_module.reset()
    pk = make().pk
    held = HeldPuts(monkeypatch, "writer-A")
    a = writer(held, "writer-A", lambda: save(pk, "A"))
    save(pk, "B")
    held.release("writer-A")
    a.result()

    assert existing(pk).version == 2
    assert cached_entry(redis, pk).version == 1  # the stale row the version check prevents


def test_puts_run_by_hand_in_either_order_leave_the_newer_version(redis):
    pk = make().pk
    save(pk, "A")
    v1 = existing(pk)
    save(pk, "B")
    v2 = existing(pk)
    cache = row_cache_for(Profile)
    assert isinstance(cache, WriteThroughRowCache)
    keys = keys_of(Profile, pk)

    def put(row: Profile) -> int:
        payload = cache.encode(row)
        assert payload is not None
        command = cache.put_command(keys, row.version, payload)
        return int(get_store().pipeline([command])[0])

    for first, second, landed in [(v1, v2, (1, 1)), (v2, v1, (1, 0))]:
        redis.delete(keys.value, keys.version)
        assert (put(first), put(second)) == landed
        assert state(cached_entry(redis, pk)) == state(v2)


def bulk_update(pk: Any, name: str) -> None:
    profile = orm().get(pk=pk)
    profile.name = name
    Profile.objects.bulk_update([profile], ["name"])


OTHER_WRITES: dict[str, Callable[[Any, str], Any]] = {
    "update": lambda pk, name: Profile.objects.filter(pk=pk).update(name=name),
    "bulk_update": bulk_update,
    "delete": lambda pk, name: orm().get(pk=pk).delete(),
    "queryset-delete": lambda pk, name: Profile.objects.filter(pk=pk).delete(),
}


@pytest.mark.parametrize(
    "other",
    [
        "update",
        "bulk_update",
        "delete",
        "queryset-delete",
    ],
)
def test_a_put_arriving_after_a_later_bulk_write_or_delete_leaves_no_older_row(redis, monkeypatch, other):
    pk = make().pk
    held = HeldPuts(monkeypatch, "writer-A")
    a = writer(held, "writer-A", lambda: save(pk, "A"))  # commits v1, put pending
    OTHER_WRITES[other](pk, "B")  # commits v2 (or deletes), its cache work done
    held.release("writer-A")
    a.result()

    assert_cached_is_db_or_absent(redis, pk)
    if other.endswith("delete"):
        assert redis.get(keys_of(Profile, pk).version) == b"x"
        with pytest.raises(Profile.DoesNotExist):
            Profile.objects.get(pk=pk)
    else:
        assert state(Profile.objects.get(pk=pk)) == state(existing(pk))


def _delete_elsewhere(pk: Any) -> None:
    """Delete row ``pk`` on another connection, bypassing the ORM: a deleter that has
    committed and whose tombstone has not reached Redis yet."""

    def run() -> None:
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute(f"DELETE FROM {Profile._meta.db_table} WHERE id = %s", [pk])
        finally:
            connections.close_all()

    worker = Worker(run, name="deleter")
    worker.start()
    worker.result()


@pytest.mark.parametrize("write", ["save", "update_fields", "update", "bulk_update"])
def test_a_write_whose_row_is_deleted_before_its_read_back_leaves_no_older_copy(redis, write):
    """
    A write commits, then another connection deletes the row before this write reads
    it back to put it (its deleter's tombstone still on its way). The write's own
    cache work must not leave the copy from before the write readable once it returns:
    the stress run once read version 2 back right after its save of version 3.
    """
    profile = make()
    Profile.objects.get(pk=profile.pk)
    assert cached(redis, profile.pk) is not None  # version 0 is cached
    connection = connections["default"]
    table = Profile._meta.db_table
    seen = {"update": False, "deleted": False}

    def delete_before_read_back(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("UPDATE") and table in sql:
            seen["update"] = True
        elif (
            sql.startswith("SELECT")
            and seen["update"]
            and not seen["deleted"]
            and not connection.in_atomic_block
        ):
            seen["deleted"] = True  # committed, and reading: this is the read-back
            _delete_elsewhere(profile.pk)
        return execute(sql, params, many, context)

    writes = {"save": save, "update_fields": partial_save, "bulk_update": bulk_update, **OTHER_WRITES}
    with connection.execute_wrapper(delete_before_read_back):
        writes[write](profile.pk, "new")

    if not seen["deleted"]:
        # MySQL's LAST_INSERT_ID and PostgreSQL's RETURNING give a full save its
        # version: it puts what it wrote without reading it back, the write's own row.
        assert write == "save", "the write never read its row back"
        assert connection.vendor in ("mysql", "postgresql"), "the write never read its row back"
        assert cached(redis, profile.pk).name == "new"  # type: ignore[union-attr]
        return
    assert db_row(profile.pk) is None
    assert cached(redis, profile.pk) is None, "the copy from before the write is still cached"
    assert redis.get(keys_of(Profile, profile.pk).version) == b"x"
    with pytest.raises(Profile.DoesNotExist):
        Profile.objects.get(pk=profile.pk)


# -- a reader's fill against a writer's put ---------------------------------------------


READERS: dict[str, Callable[[Profile], Callable[[], Any]]] = {
    "get-pk": lambda p: lambda: Profile.objects.get(pk=p.pk),
    "get-handle": lambda p: lambda: Profile.objects.get(handle=p.handle),
    "get_many": lambda p: lambda: Profile.objects.get_many([p.pk])[p.pk],
}

READ_RACE_WRITES: dict[str, Callable[[Any, str], Any]] = {
    "save": save,
    "atomic-save": atomic_save,
    "update_fields": partial_save,
    "update": OTHER_WRITES["update"],
    "bulk_update": bulk_update,
    "delete": OTHER_WRITES["delete"],
}


@pytest.mark.parametrize("write", list(READ_RACE_WRITES))
@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("version_key", ["kept", "expired"])
def test_a_reader_fill_never_replaces_a_newer_put(redis, reader, write, version_key):
    profile = make()
    Profile.objects.filter(pk=profile.pk).update(score=1)  # version 1 in the database
    keys = keys_of(Profile, profile.pk)
    # The value expired (its version key lives longer, unless it expired too): readers miss.
    redis.delete(keys.value, *([keys.version] if version_key == "expired" else []))

    held = HeldReader(READERS[reader](profile), marker="score")
    held.start()
    assert redis.get(keys.lease) is not None  # the reader holds the fill lease
    READ_RACE_WRITES[write](profile.pk, "new")  # commits version 2 (or deletes) and puts/invalidates

    loaded = held.release()
    settle()  # the reader's fill went out without waiting for a reply; let it land

    assert (loaded.name, loaded.version) == ("v0", 1)  # the race happened: it read version 1
    entry = cached(redis, profile.pk)
    assert entry is None or entry.version != 1, "the reader's older row replaced the newer one"
    assert_cached_is_db_or_absent(redis, profile.pk)
    if write in WRITES:
        # A writer that puts: its row stays, the reader's fill was refused.
        assert state(cached_entry(redis, profile.pk)) == state(existing(profile.pk))
    if write == "delete":
        with pytest.raises(Profile.DoesNotExist):
            Profile.objects.get(pk=profile.pk)
    else:
        assert Profile.objects.get(pk=profile.pk).name == "new"


# -- stress -----------------------------------------------------------------------------
#
# Threads of seeded random writes and reads over a few rows. Two checks:
#
# - at quiescence, every row is cached exactly as the database holds it, or not at all;
# - all along, a monitor thread compares every cached row with the newest version a
#   write is known to have committed *and finished its cache work for*: after that
#   point no correct put or fill can leave an older version (or a deleted row)
#   cached, so any sighting is a stale row, even one that a later write would heal
#   before quiescence.

ROWS = 20
THREADS = 8
OPS_PER_THREAD = 200
SEED = int(os.environ.get("CP_STRESS_SEED", "4004"))
RETRIES = 30


class Lost(Exception):
    """The row this operation wanted was deleted by another thread: nothing to do."""


def _retriable(error: OperationalError) -> bool:
    code = error.args[0] if error.args else None
    # MySQL 1213 deadlock / 1205 lock wait timeout; SQLite's busy database.
    # PostgreSQL locks the rows of a multi-row UPDATE in scan (heap) order, not by
    # primary key as InnoDB does, so overlapping writers deadlock there too: 40P01
    # deadlock, 40001 serialization failure, 55P03 lock not available.
    sqlstate = getattr(error.__cause__, "sqlstate", None)
    return (
        code in (1213, 1205)
        or sqlstate in ("40P01", "40001", "55P03")
        or "database is locked" in str(error).lower()
    )


class Stress:
    """Shared state of a stress run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slots: list[Any] = []
        self.every_pk: set[Any] = set()
        #: pk -> the newest version a finished write committed (its cache work done).
        self.floors: dict[Any, int] = {}
        #: rows whose delete has finished (tombstone written).
        self.deleted: set[Any] = set()
        self.done: Counter[str] = Counter()
        self.stale: dict[tuple[Any, int], str] = {}

    def created(self, slot: int | None, pk: Any) -> None:
        with self.lock:
            self.every_pk.add(pk)
            self.floors[pk] = 0
            if slot is None:
                self.slots.append(pk)
            else:
                self.slots[slot] = pk

    def committed(self, pk: Any, version: Any) -> None:
        if isinstance(version, int):
            with self.lock:
                self.floors[pk] = max(self.floors.get(pk, 0), version)

    def gone(self, pk: Any) -> None:
        with self.lock:
            self.deleted.add(pk)

    def pick(self, rng: random.Random, n: int = 1) -> list[Any]:
        with self.lock:
            return rng.sample(self.slots, n)

    def snapshot(self) -> tuple[dict[Any, int], set[Any]]:
        with self.lock:
            return dict(self.floors), set(self.deleted)

    def check(self, entries: dict[Any, Profile | None], floors: dict[Any, int], deleted: set[Any]) -> None:
        """Record every cached row older than what a finished write committed."""
        for pk, entry in entries.items():
            if entry is None:
                continue
            if pk in deleted:
                problem = f"pk={pk}: cached {state(entry)} after its delete finished"
            elif entry.version < floors.get(pk, 0):
                problem = f"pk={pk}: cached version {entry.version} after version {floors[pk]} was written"
            else:
                continue
            with self.lock:
                self.stale.setdefault((pk, entry.version), problem)


def _load(pk: Any, *, lock: bool = False) -> Profile:
    query = orm()
    if lock:
        query = query.select_for_update()
    profile = query.filter(pk=pk).first()
    if profile is None:
        raise Lost
    return profile


def _touch(rng: random.Random, profile: Profile) -> None:
    profile.name = f"n{rng.randrange(10**6)}"
    profile.score = rng.randrange(1000)


def _read_back(stress: Stress, profile: Profile) -> None:
    """The read right after a committed save sees that save, or something newer."""
    with contextlib.suppress(Profile.DoesNotExist):
        got = Profile.objects.get(pk=profile.pk)
        if isinstance(profile.version, int) and got.version < profile.version:
            with stress.lock:
                stress.stale.setdefault(
                    (profile.pk, got.version),
                    f"pk={profile.pk}: saved version {profile.version}, read back {got.version}",
                )


def op_save(stress: Stress, rng: random.Random) -> None:
    profile = _load(stress.pick(rng)[0])
    _touch(rng, profile)
    try:
        # force_update: a plain save() of a row deleted since the load would INSERT
        # it again (Django's semantics), and "deleted" would no longer mean gone.
        # That path has its own test in test_write_through.py.
        profile.save(force_update=True)
    except DatabaseError as e:
        if "did not affect any rows" not in str(e):
            raise
        raise Lost from e
    stress.committed(profile.pk, profile.version)
    _read_back(stress, profile)


def op_atomic_save(stress: Stress, rng: random.Random) -> None:
    pks = sorted(stress.pick(rng, rng.choice([1, 2])))
    profiles = []
    with transaction.atomic():
        for pk in pks:
            with transaction.atomic():
                profile = _load(pk, lock=True)
                _touch(rng, profile)
                profile.save()
                profiles.append(profile)
        if rng.random() < 0.3:
            # A savepoint whose save rolls back: it must put nothing.
            try:
                with transaction.atomic():
                    doomed = _load(pks[0], lock=True)
                    doomed.name = "rolled back"
                    doomed.save()
                    raise Lost
            except Lost:
                pass
    for profile in profiles:
        stress.committed(profile.pk, profile.version)
        _read_back(stress, profile)


def op_partial_save(stress: Stress, rng: random.Random) -> None:
    profile = _load(stress.pick(rng)[0])
    profile.score = rng.randrange(1000)
    try:
        profile.save(update_fields=["score"])
    except DatabaseError as e:
        if "did not affect any rows" not in str(e):
            raise
        raise Lost from e  # deleted meanwhile: Django's own answer for update_fields
    # Outside a transaction the version comes from the row read back and put after
    # the commit: possibly a newer writer's, but then that row is what was put.
    stress.committed(profile.pk, profile.version)
    _read_back(stress, profile)


def op_update(stress: Stress, rng: random.Random) -> None:
    pks = sorted(stress.pick(rng, rng.choice([1, 2, 3])))
    with transaction.atomic():
        Profile.objects.filter(pk__in=pks).update(score=F("score") + 1, name=f"u{rng.randrange(10**6)}")
        # The rows are ours until commit: these are the versions this update wrote.
        versions = dict(orm().filter(pk__in=pks).values_list("pk", "version"))
    for pk, version in versions.items():
        stress.committed(pk, version)


def op_bulk_update(stress: Stress, rng: random.Random) -> None:
    pks = sorted(stress.pick(rng, rng.choice([1, 2, 3])))
    profiles = list(orm().filter(pk__in=pks))
    for profile in profiles:
        _touch(rng, profile)
    if profiles:
        Profile.objects.bulk_update(profiles, ["name", "score"])
    for profile in profiles:
        stress.committed(profile.pk, profile.version)  # None for a row deleted meanwhile


def op_delete_and_create(stress: Stress, rng: random.Random) -> None:
    with stress.lock:
        slot = rng.randrange(len(stress.slots))
        pk = stress.slots[slot]
    try:
        if rng.random() < 0.5:
            deleted, _ = Profile.objects.filter(pk=pk).delete()
        else:
            deleted, _ = _load(pk).delete()
    except Lost:
        deleted = 0
    if deleted:
        # Only a delete that removed the row has written its tombstone on return;
        # another thread's delete of the same row may still be on its way to Redis.
        stress.gone(pk)
    created = Profile.objects.create(handle=f"s{slot}-{uuid.uuid4().hex[:12]}", name="fresh")
    stress.created(slot, created.pk)


def op_read(stress: Stress, rng: random.Random) -> None:
    kind = rng.random()
    if kind < 0.5:
        with contextlib.suppress(Profile.DoesNotExist):
            Profile.objects.get(pk=stress.pick(rng)[0])
    elif kind < 0.75:
        pk = stress.pick(rng)[0]
        handle = orm().filter(pk=pk).values_list("handle", flat=True).first()
        if handle is not None:
            with contextlib.suppress(Profile.DoesNotExist):
                Profile.objects.get(handle=handle)
    else:
        Profile.objects.get_many(stress.pick(rng, 4))


OPERATIONS: list[tuple[Callable[[Stress, random.Random], None], int]] = [
    (op_read, 30),
    (op_save, 18),
    (op_atomic_save, 12),
    (op_partial_save, 8),
    (op_update, 14),
    (op_bulk_update, 12),
    (op_delete_and_create, 6),
]


Operations = list[tuple[Callable[[Stress, random.Random], None], int]]

WITHOUT_BULK_WRITES: Operations = [
    (op, weight) for op, weight in OPERATIONS if op not in (op_update, op_bulk_update)
]


def stress_thread(stress: Stress, index: int, ops: int, operations: Operations) -> None:
    rng = random.Random(SEED * 1000 + index)
    functions = [op for op, _ in operations]
    weights = [w for _, w in operations]
    for _ in range(ops):
        op = rng.choices(functions, weights)[0]
        for attempt in range(RETRIES):
            try:
                op(stress, rng)
            except Lost:
                outcome = "lost"
            except OperationalError as e:
                if not _retriable(e) or attempt == RETRIES - 1:
                    raise
                with stress.lock:
                    stress.done["retry"] += 1
                time.sleep(rng.uniform(0, 0.005 * (attempt + 1)))
                continue
            else:
                outcome = op.__name__
            with stress.lock:
                stress.done[outcome] += 1
            break


def cached_rows(redis: Any, pks: list[Any]) -> dict[Any, Profile | None]:
    """Return what the cache holds for ``pks`` (one MGET; one per slot on a cluster)."""
    cache = row_cache_for(Profile)
    assert cache is not None
    mget = redis.mget_nonatomic if hasattr(redis, "get_nodes") else redis.mget
    raws = mget([keys_of(Profile, pk).value for pk in pks]) if pks else []
    return {
        pk: None if raw is None else cast(Profile, cache.decode(raw, "default"))
        for pk, raw in zip(pks, raws, strict=True)
    }


def monitor(redis: Any, stress: Stress, stop: threading.Event) -> int:
    """Compare the whole cache with the finished writes until ``stop``; return the passes."""
    passes = 0
    while not stop.is_set():
        floors, deleted = stress.snapshot()  # taken before reading Redis
        stress.check(cached_rows(redis, list(floors)), floors, deleted)
        passes += 1
        time.sleep(0.002)
    return passes


def _no_leases(redis: Any) -> bool:
    pattern = f"{settings.CACHEPATTERNS['KEY_PREFIX']}:{{{LABEL}:*}}:l"
    return not any(True for _ in redis.scan_iter(match=pattern, count=1000))


def delay_puts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let half the puts wait up to 30 ms after their commit, so puts overtake each other."""
    original = WriteThroughRowCache._put
    jitter = random.Random(SEED)
    jitter_lock = threading.Lock()

    def late_put(cache: WriteThroughRowCache, puts: Any) -> None:
        with jitter_lock:
            pause = jitter.uniform(0, 0.03) if jitter.random() < 0.5 else 0.0
        time.sleep(pause)
        original(cache, puts)

    monkeypatch.setattr(WriteThroughRowCache, "_put", late_put)


def run_stress(redis: Any, operations: Operations) -> None:
    """Run the threads over ``ROWS`` rows, watching the cache; assert nothing was stale."""
    stress = Stress()
    for i in range(ROWS):
        stress.created(None, Profile.objects.create(handle=f"row{i}", name="start").pk)

    stop = threading.Event()
    watcher = Worker(lambda: monitor(redis, stress, stop), name="stress-monitor")
    watcher.start()
    started = time.monotonic()
    workers = [
        Worker(functools.partial(stress_thread, stress, i, OPS_PER_THREAD, operations), name=f"stress-{i}")
        for i in range(THREADS)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.result(timeout=300)
    finally:
        stop.set()
        passes = watcher.result()
    elapsed = time.monotonic() - started

    # Quiescence: every fire-and-forget fill has run once no fill lease is left.
    assert wait_until(lambda: _no_leases(redis)), "fill leases still held"
    settle()
    summary = f"{THREADS}x{OPS_PER_THREAD} ops in {elapsed:.1f}s ({passes} monitor passes)"
    print(f"\nstress: {summary}: {dict(stress.done)}")

    finished = sum(n for op, n in stress.done.items() if op.startswith("op_"))
    assert finished > THREADS * OPS_PER_THREAD * 0.8
    floors, deleted = stress.snapshot()
    entries = cached_rows(redis, sorted(stress.every_pk))
    stress.check(entries, floors, deleted)
    final: list[str] = []
    for pk, entry in entries.items():
        row = db_row(pk)
        if entry is not None and (row is None or state(entry) != state(row)):
            final.append(f"pk={pk}: cached {state(entry)}, database {None if row is None else state(row)}")
    assert not final, "at quiescence:\n" + "\n".join(final)
    assert not stress.stale, "seen while running:\n" + "\n".join(stress.stale.values())
    assert any(entry is not None for entry in entries.values())  # the check compared something


@pytest.mark.slow
@pytest.mark.parametrize("put_delay", [False, True], ids=["natural", "delayed-puts"])
def test_stress_saves_and_deletes_never_leave_an_older_row_cached(redis, monkeypatch, put_delay):
    if put_delay:
        delay_puts(monkeypatch)
    run_stress(redis, WITHOUT_BULK_WRITES)


@pytest.mark.slow
@pytest.mark.parametrize(
    "put_delay",
    [
        # Natural timing: the monitor caught the bug in 10 of 10 seeded runs on MariaDB
        # but 3 of 10 on SQLite, so a pass proves nothing here and is not an error.
        pytest.param(False, id="natural"),
        # Puts delayed: caught in every run measured (30 of 30, both databases).
        pytest.param(True, id="delayed-puts"),
    ],
)
def test_stress_every_write_path_never_leaves_an_older_row_cached(redis, monkeypatch, put_delay):
    if put_delay:
        delay_puts(monkeypatch)
    run_stress(redis, OPERATIONS)
