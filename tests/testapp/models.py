"""Models the test suite exercises: one per situation the app must handle."""

from __future__ import annotations

import uuid

from django.db import models

from cachepatterns_app import CacheAsideManager, InvalidatingManager, WriteBehindManager, WriteThroughManager

# Not from cachepatterns_app.models: a test runs this app without cachepatterns_app installed.
from cachepatterns_app.patterns.write_behind.model import WriteBehindModel
from tests.testapp.collations import EXACT_COLLATION, LOOSE_COLLATION
from tests.testapp.fields import DB_CASCADE, DB_SET_NULL, LowerCaseField


class Author(models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    slug = models.SlugField(unique=True, null=True)
    bio = models.TextField(blank=True, default="")
    joined = models.DateTimeField(auto_now_add=True)

    objects = CacheAsideManager(ttl=300)

    def __str__(self) -> str:
        return self.name


class AuthorProxy(Author):
    class Meta:
        proxy = True


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)

    objects = InvalidatingManager()


class Post(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="posts")
    editor = models.ForeignKey(
        Author, on_delete=models.SET_NULL, null=True, blank=True, related_name="edited"
    )
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="posts")

    objects = InvalidatingManager()

    class Meta:
        ordering = ["-created_at", "-id"]


class Everything(models.Model):
    """One of every concrete field type the serializer must round-trip."""

    char = models.CharField(max_length=300, blank=True, default="")
    text = models.TextField(blank=True, default="")
    slug = models.SlugField(blank=True, default="")
    email = models.EmailField(blank=True, default="")
    url = models.URLField(blank=True, default="")
    integer = models.IntegerField(null=True)
    small = models.SmallIntegerField(null=True)
    big = models.BigIntegerField(null=True)
    positive = models.PositiveIntegerField(null=True)
    floating = models.FloatField(null=True)
    decimal = models.DecimalField(max_digits=20, decimal_places=6, null=True)
    boolean = models.BooleanField(default=False)
    maybe = models.BooleanField(null=True)
    day = models.DateField(null=True)
    moment = models.DateTimeField(null=True)
    clock = models.TimeField(null=True)
    duration = models.DurationField(null=True)
    uuid = models.UUIDField(null=True)
    blob = models.BinaryField(null=True)
    data = models.JSONField(null=True)
    ip = models.GenericIPAddressField(null=True)
    author = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL)

    objects = CacheAsideManager()


class Document(models.Model):
    """A UUID primary key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    title = models.CharField(max_length=100)

    objects = CacheAsideManager(ttl=60)


class Profile(models.Model):
    """Write-through, ordered by ``version``."""

    handle = models.CharField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    score = models.IntegerField(default=0)
    version = models.PositiveBigIntegerField(default=0)

    objects = WriteThroughManager(ttl=300)

    def __str__(self) -> str:
        return self.handle


class Place(models.Model):
    """Multi-table inheritance: a Restaurant's save also writes its Place row."""

    owner_id = models.IntegerField()
    name = models.CharField(max_length=50)

    objects = InvalidatingManager()


class Restaurant(Place):
    seats = models.IntegerField(default=0)


class PlaceProxy(Place):
    class Meta:
        proxy = True


class Account(models.Model):
    """A write-through parent whose rows multi-table children also write."""

    name = models.CharField(max_length=50)
    version = models.PositiveBigIntegerField(default=0)

    objects = WriteThroughManager(ttl=300)


class BusinessAccount(Account):
    vat = models.CharField(max_length=20, blank=True, default="")


class Stamped(models.Model):
    """An abstract base that declares the cached manager for its subclasses."""

    created = models.DateTimeField(auto_now_add=True)

    objects = CacheAsideManager(ttl=60)

    class Meta:
        abstract = True


class Article(Stamped):
    title = models.CharField(max_length=100)


# -- identity (issue 7): spellings the database treats as one value ------------------------


class Code(models.Model):
    """A natural string primary key on a collation that ignores case (on MySQL also accents, spaces)."""

    code = models.CharField(primary_key=True, max_length=20, db_collation=LOOSE_COLLATION)
    label = models.CharField(max_length=50)

    objects = CacheAsideManager(ttl=300)


class Member(models.Model):
    """A unique text field on a collation that ignores case."""

    email = models.CharField(max_length=100, unique=True, db_collation=LOOSE_COLLATION)
    name = models.CharField(max_length=100)

    objects = CacheAsideManager(ttl=300)


class Price(models.Model):
    """A Decimal primary key: ``"1.5"`` and ``1.50`` are one row."""

    amount = models.DecimalField(primary_key=True, max_digits=6, decimal_places=2)
    label = models.CharField(max_length=50)

    objects = CacheAsideManager(ttl=300)


class Listing(models.Model):
    """Rows whose families are keyed by a string foreign key, a UUID and a case-insensitive text."""

    code = models.ForeignKey(Code, on_delete=models.CASCADE, related_name="listings")
    document = models.ForeignKey(Document, null=True, on_delete=models.SET_NULL, related_name="listings")
    member_email = models.CharField(max_length=100, db_collation=LOOSE_COLLATION, default="")
    title = models.CharField(max_length=100)

    objects = InvalidatingManager()


# -- write paths (issue 8) ----------------------------------------------------------------------


class Vehicle(models.Model):
    """A plain (uncached) multi-table parent of cached children."""

    name = models.CharField(max_length=50)
    owner_id = models.IntegerField(default=0)

    objects = InvalidatingManager()


class Car(Vehicle):
    """A cache-aside child: its cached rows hold Vehicle's columns."""

    doors = models.IntegerField(default=4)

    objects = CacheAsideManager(ttl=300)  # type: ignore[misc]


class Truck(Vehicle):
    """A write-through child whose version column lives in the child's own table."""

    axles = models.IntegerField(default=2)
    version = models.PositiveBigIntegerField(default=0)

    objects = WriteThroughManager(ttl=300)  # type: ignore[misc]


class Media(models.Model):
    """A concrete model that is not cached itself; a proxy of it is."""

    title = models.CharField(max_length=50)

    objects = InvalidatingManager()


class CachedMedia(Media):
    objects = CacheAsideManager(ttl=300)  # type: ignore[misc]

    class Meta:
        proxy = True


class Ledger(models.Model):
    """Write-through with values the database rewrites: Decimal rounding, a normalising field."""

    code = LowerCaseField(max_length=30, unique=True)
    amount = models.DecimalField(max_digits=8, decimal_places=2, default=0)
    data = models.JSONField(default=dict)
    version = models.PositiveBigIntegerField(default=0)

    objects = WriteThroughManager(ttl=300)


class Kennel(models.Model):
    """Parent of rows the database deletes or updates by itself (Django 6.1's DB_* on_delete)."""

    name = models.CharField(max_length=50)

    objects = InvalidatingManager()


class Dog(models.Model):
    kennel = models.ForeignKey(Kennel, on_delete=DB_CASCADE, related_name="dogs")
    name = models.CharField(max_length=50)

    objects = CacheAsideManager(ttl=300)


class Puppy(models.Model):
    """Cascaded in the database from a Dog, itself cascaded from a Kennel."""

    dog = models.ForeignKey(Dog, on_delete=DB_CASCADE, related_name="puppies")
    name = models.CharField(max_length=50)

    objects = CacheAsideManager(ttl=300)


class Cat(models.Model):
    kennel = models.ForeignKey(Kennel, null=True, on_delete=DB_SET_NULL, related_name="cats")
    name = models.CharField(max_length=50)

    objects = CacheAsideManager(ttl=300)


class Team(models.Model):
    """A many-to-many relation through a link model of the project's own."""

    name = models.CharField(max_length=50)
    members = models.ManyToManyField(Author, through="Membership", related_name="teams")

    objects = InvalidatingManager()


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
    role = models.CharField(max_length=20, default="member")

    objects = InvalidatingManager()


def _no_kennel() -> None:
    return None


class Bowl(models.Model):
    """Children Django's collector rewrites with SET_DEFAULT and SET()."""

    kennel = models.ForeignKey(
        Kennel, null=True, default=None, on_delete=models.SET_DEFAULT, related_name="bowls"
    )
    spare_for = models.ForeignKey(
        Kennel, null=True, on_delete=models.SET(_no_kennel), related_name="spare_bowls"
    )
    name = models.CharField(max_length=50)

    objects = CacheAsideManager(ttl=300)


class Collar(models.Model):
    """Rows whose parents' deletes are refused (PROTECT, RESTRICT): nothing may change."""

    owner = models.ForeignKey(Author, on_delete=models.PROTECT, related_name="collars")
    kennel = models.ForeignKey(Kennel, null=True, on_delete=models.RESTRICT, related_name="collars")
    name = models.CharField(max_length=50)

    objects = CacheAsideManager(ttl=300)


# -- write-behind (issue 10) --------------------------------------------------------------------


class Counter(WriteBehindModel):
    """Write-behind with a UUID primary key: created, saved, counted and deleted through Redis."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=50)
    views = models.IntegerField(default=0)
    likes = models.IntegerField(default=0)
    price = models.DecimalField(max_digits=8, decimal_places=2, default=0)
    touched = models.DateTimeField(auto_now=True)

    objects = WriteBehindManager(ttl=300)


class Tally(WriteBehindModel):
    """A natural key and a unique column: a queued write the database refuses (poison)."""

    key = models.CharField(primary_key=True, max_length=40, db_collation=EXACT_COLLATION)
    label = models.CharField(max_length=40, unique=True)
    total = models.IntegerField(default=0)

    objects = WriteBehindManager(ttl=300)


class Visit(WriteBehindModel):
    """An auto-increment key: created synchronously, later saves queued."""

    page = models.CharField(max_length=50)
    hits = models.IntegerField(default=0)

    objects = WriteBehindManager(ttl=300, sync_creates=True)


class Journal(WriteBehindModel):
    """Every kind of column a queued write stores: the flush must write what was queued."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    title = models.CharField(max_length=60)
    slug = models.SlugField(unique=True)
    note = models.TextField(null=True)
    small = models.SmallIntegerField(default=0)
    big = models.BigIntegerField(default=0)
    positive = models.PositiveIntegerField(default=0)
    flag = models.BooleanField(default=False)
    maybe = models.BooleanField(null=True)
    amount = models.DecimalField(max_digits=12, decimal_places=3, default=0)
    ratio = models.FloatField(default=0.0)
    day = models.DateField(null=True)
    at = models.TimeField(null=True)
    span = models.DurationField(null=True)
    data = models.JSONField(null=True)
    blob = models.BinaryField(null=True)
    ip = models.GenericIPAddressField(null=True)
    owner = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(auto_now_add=True)
    changed = models.DateTimeField(auto_now=True)

    objects = WriteBehindManager(ttl=300)


class Reserved(WriteBehindModel):
    """Review: a table and columns named by reserved words; nullable columns of every kind."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    order = models.IntegerField(null=True, db_column="order")
    select = models.CharField(max_length=300, null=True, db_column="select")
    text = models.TextField(null=True, db_column="group")
    at = models.DateTimeField(null=True)
    amount = models.DecimalField(max_digits=30, decimal_places=10, null=True)
    ratio = models.FloatField(null=True)
    flag = models.BooleanField(null=True)
    ref = models.UUIDField(null=True)
    data = models.JSONField(null=True)
    blob = models.BinaryField(null=True)
    span = models.DurationField(null=True)
    big = models.BigIntegerField(null=True)

    objects = WriteBehindManager(ttl=300)

    class Meta:
        db_table = "order"


class Badge(WriteBehindModel):
    """Review: a one-to-one primary key."""

    author = models.OneToOneField(Author, primary_key=True, on_delete=models.CASCADE, related_name="+")
    points = models.IntegerField(default=0)

    objects = WriteBehindManager(ttl=300)


class Wide(WriteBehindModel):
    """Review: 60 columns (SQLite's parameter limit)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    for _i in range(60):
        locals()[f"c{_i}"] = models.IntegerField(default=0)
    del _i

    objects = WriteBehindManager(ttl=300)
