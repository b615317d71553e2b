"""
Model signals as a source of writes: each handler describes what changed as a
:class:`~cachepatterns_app.changes.RowChange` and hands it to ``writes.record``.

Per-instance writes arrive as ``pre_save``/``post_save``/``pre_delete``/
``post_delete``; many-to-many links as ``m2m_changed`` or as writes of the link
model; children that Django's collector (``SET_NULL``…) or the database itself
(``DB_CASCADE``, ``DB_SET_NULL``… on Django 6.1+) changes without a signal of
their own are looked up before their parent's delete. Bulk writes arrive from the
app's querysets (``managers``) instead.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

from django.apps import apps
from django.db import models
from django.db.models import ManyToManyRel, Model, signals

from cachepatterns_app.changes import DELETE, LINK, SAVE, UPDATE, RowChange
from cachepatterns_app.registry import dependencies_of, watched_models
from cachepatterns_app.rows import (
    dependency_fields,
    has_dependants,
    old_rows,
    resolve_pks,
    spelling_is_trusted,
)
from cachepatterns_app.writes import PARENT, SELF, affected_caches, fresh_rows, record

__all__ = ["connect_all", "connect_model", "is_link_model", "link_models", "record_links"]

logger = logging.getLogger(__name__)

_OLD = "_cachepatterns_old"
_UNTRUSTED = "_cachepatterns_untrusted_pk"


# -- save and delete ------------------------------------------------------------------------


def _pre_save(
    sender: type[Model], instance: Model, raw: bool, using: str, update_fields: Any, **kwargs: Any
) -> None:
    if raw:
        # Fixture loading: the instance must be saved exactly as given, so no version
        # bump and no lookups; post_save still invalidates.
        return
    for relation, cache in affected_caches(sender):
        if relation in (SELF, PARENT):
            cache.before_save(instance, using, update_fields)
    if instance._state.adding and not spelling_is_trusted(sender, using):
        # Built by hand (not loaded): its primary key is the caller's spelling.
        instance.__dict__[_UNTRUSTED] = True
    if (instance._state.adding and instance.pk is None) or not has_dependants(sender):
        return
    fields = dependency_fields(sender)
    if update_fields is not None and fields is not None and not set(update_fields) & _names(sender, fields):
        return
    instance.__dict__[_OLD] = old_rows(models.QuerySet(sender, using=using).filter(pk=instance.pk))


def _names(model: type[Model], names: set[str]) -> set[str]:
    out: set[str] = set()
    for name in names:
        field = model._meta.get_field(name)
        out.update({field.name, getattr(field, "attname", field.name)})
    return out


def _post_save(
    sender: type[Model],
    instance: Model,
    created: bool,
    raw: bool,
    using: str,
    update_fields: Any,
    **kwargs: Any,
) -> None:
    old = instance.__dict__.pop(_OLD, [])
    pks = [instance.pk]
    if instance.__dict__.pop(_UNTRUSTED, False) and not created:
        # An UPDATE by a hand-built instance may have matched the row under another
        # spelling of its key (a case-insensitive collation): reach that one too.
        pks = resolve_pks(sender, using, pks)
    new = fresh_rows(sender, using, [instance], dependency_fields(sender)) if dependencies_of(sender) else []
    if raw:
        record(RowChange(sender, using, pks, UPDATE, new=[instance]))
        return
    record(
        RowChange(
            sender,
            using,
            pks[::-1] if len(pks) > 1 else pks,  # the database's spelling first: saved() puts under it
            SAVE,
            old=old,
            new=new,
            instance=instance,
            update_fields=update_fields,
        )
    )


def _pre_delete(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
    if instance._state.adding and not spelling_is_trusted(sender, using):
        instance.__dict__[_UNTRUSTED] = resolve_pks(sender, using, [instance.pk])


def _post_delete(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
    pks = instance.__dict__.pop(_UNTRUSTED, None) or [instance.pk]
    record(RowChange(sender, using, pks, DELETE, old=[instance]))


def _link_deleted(
    sender: type[Model], instance: Model, using: str, origin: Any = None, **kwargs: Any
) -> None:
    """
    A row of a many-to-many link model was deleted. Only a delete of that row itself
    (or through a plain manager) is reported here: the app's querysets report their
    deletes in one go, and deleting a linked row reports its links beforehand
    (``_unlinking_handler``), where Django deletes the links as a cascade.
    """
    if isinstance(origin, sender) or (
        isinstance(origin, models.QuerySet) and origin.model is sender and not _reports_links(origin)
    ):
        record_links(sender, using, [instance])


def _reports_links(queryset: Any) -> bool:
    return bool(getattr(queryset, "reports_links", False))


# -- children changed by a delete without a signal of their own ----------------------------


def _set_on_delete_handler(child: type[Model], field: models.ForeignKey[Any, Any]) -> Callable[..., None]:
    """
    Deleting a parent row with ``on_delete=SET_NULL``/``SET_DEFAULT``/``SET()`` makes
    Django's collector update child rows with a plain ``UPDATE`` (``DB_SET_NULL`` and
    ``DB_SET_DEFAULT`` make the database do it): no signal tells us, so look up the
    children before the delete.
    """

    def handler(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
        query: models.QuerySet[Any, Any] = models.QuerySet(child, using=using).filter(
            **{field.name: instance}
        )
        children = old_rows(query)
        pks = [row.pk for row in children] if children else list(query.values_list("pk", flat=True))
        if not pks:
            return
        value = None if field.remote_field.on_delete in _SETS_NULL else field.get_default()
        moved = []
        for row in children:
            clone = copy.copy(row)
            clone.__dict__[field.attname] = getattr(value, "pk", value)
            moved.append(clone)
        record(RowChange(child, using, pks, UPDATE, old=children, new=moved))

    return handler


def _db_cascade_handler(child: type[Model], field: models.ForeignKey[Any, Any]) -> Callable[..., None]:
    """
    ``on_delete=DB_CASCADE`` (Django 6.1+) deletes child rows inside the database,
    with no signal and no collector: look them up (and, recursively, their own
    database-cascaded children) before the parent's delete, and report them deleted.
    """

    def handler(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
        _report_db_cascade(child, field, [instance.pk], using, depth=0)

    return handler


def _report_db_cascade(
    child: type[Model], field: models.ForeignKey[Any, Any], parent_pks: list[Any], using: str, depth: int
) -> None:
    if depth > 16 or not parent_pks:
        return
    rows: list[Model] = list(
        models.QuerySet(child, using=using).filter(**{f"{field.attname}__in": parent_pks})
    )
    if not rows:
        return
    pks = [row.pk for row in rows]
    record(RowChange(child, using, pks, DELETE, old=rows))
    for grandchild, link in _db_level_children(child):
        if _db_on_delete(link) == "DB_CASCADE":
            _report_db_cascade(grandchild, link, pks, using, depth + 1)


_SETS_NULL: set[Any] = {models.SET_NULL}
_DB_SET_NULL = getattr(models, "DB_SET_NULL", None)
if _DB_SET_NULL is not None:
    _SETS_NULL.add(_DB_SET_NULL)


def _db_on_delete(field: Any) -> str | None:
    """Return ``"DB_CASCADE"``/``"DB_SET_NULL"``/``"DB_SET_DEFAULT"`` for a database-level on_delete."""
    name = getattr(field.remote_field.on_delete, "__name__", "")
    return name if name.startswith("DB_") else None


def _db_level_children(model: type[Model]) -> list[tuple[type[Model], Any]]:
    out = []
    for related in model._meta.related_objects:
        if related.one_to_many or related.one_to_one:
            remote = related.field
            if _db_on_delete(remote) and isinstance(related.related_model, type):
                out.append((related.related_model, remote))
    return out


# -- many-to-many links ----------------------------------------------------------------------


def _m2m_changed(
    sender: type[Model],
    instance: Model,
    action: str,
    model: type[Model],
    pk_set: set[Any] | None,
    using: str,
    **kwargs: Any,
) -> None:
    """A many-to-many link changed: both ends' dependants may have changed."""
    if _reports_links(sender._default_manager.get_queryset()):
        # add()/remove()/clear() write the link rows through the link model's default
        # manager; when that is the app's, it reports them itself.
        return
    if action == "pre_clear":
        # clear() does not say which rows it unlinks: look before they are gone.
        instance.__dict__[f"{_OLD}_m2m_{sender._meta.label}"] = _linked_pks(sender, instance, model, using)
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if action == "post_clear":
        pk_set = instance.__dict__.pop(f"{_OLD}_m2m_{sender._meta.label}", set())
    if dependencies_of(type(instance)):
        record(RowChange(type(instance), using, [instance.pk], LINK, new=[instance]))
    if pk_set and dependencies_of(model):
        others: list[Model] = list(models.QuerySet(model, using=using).filter(pk__in=list(pk_set)))
        record(RowChange(model, using, [o.pk for o in others], LINK, new=others))


def _link_saved(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
    """A row of a many-to-many link model was saved (``through.objects.create()``, ``link.save()``)."""
    record_links(sender, using, [instance])


def record_links(through: type[Model], using: str, links: Sequence[Model]) -> None:
    """Report that ``links`` (rows of a many-to-many link model) appeared or went away."""
    for field in through._meta.concrete_fields:
        if not isinstance(field, models.ForeignKey):
            continue
        model = field.related_model
        if not (isinstance(model, type) and dependencies_of(model)):
            continue
        pks = list({getattr(link, field.attname) for link in links} - {None})
        if pks:
            rows: list[Model] = list(models.QuerySet(model, using=using).filter(pk__in=pks))
            record(RowChange(model, using, [row.pk for row in rows], LINK, new=rows))


def is_link_model(model: type[Model]) -> bool:
    """Return whether ``model`` is the link model of a many-to-many relation that caches depend on."""
    return model in _link_models


_link_models: set[type[Model]] = set()


def _unlinking_handler(
    model: type[Model], through: type[Model], to_other: str, to_model: str
) -> Callable[..., None]:
    """
    Deleting a row at one end of a many-to-many relation removes its links with a
    plain DELETE on the link table (Django sends no signal for auto-created link
    tables): find the linked ``model`` rows before they are unlinked.
    """

    def handler(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
        if not dependencies_of(model):
            return
        pks: Any = (
            models.QuerySet(through, using=using)
            .filter(**{to_other: instance.pk})
            .values_list(to_model, flat=True)
        )
        rows: list[Model] = list(models.QuerySet(model, using=using).filter(pk__in=list(pks)))
        if rows:
            record(RowChange(model, using, [row.pk for row in rows], LINK, new=rows))

    return handler


def _linked_pks(through: type[Model], instance: Model, model: type[Model], using: str) -> set[Any]:
    source = target = None
    for field in through._meta.concrete_fields:
        if isinstance(field, models.ForeignKey):
            if field.related_model is type(instance) or isinstance(instance, field.related_model):
                source = source or field
            if field.related_model is model and field is not source:
                target = field
    if source is None or target is None:
        return set()
    return set(
        models.QuerySet(through, using=using)
        .filter(**{source.attname: instance.pk})
        .values_list(target.attname, flat=True)
    )


# -- wiring ------------------------------------------------------------------------------------


def _senders(model: type[Model]) -> set[type[Model]]:
    """Return every model class whose signals report writes to ``model``'s rows."""
    concrete = model._meta.concrete_model or model
    senders = {model, concrete}
    if apps.models_ready:
        # A parent's writes change the cached rows of its multi-table descendants.
        ancestors = set(concrete._meta.get_parent_list())
        for other in apps.get_models():
            meta = other._meta
            table = meta.concrete_model
            if table is concrete or table in ancestors or concrete in meta.get_parent_list():
                senders.add(other)
    return senders


def connect_model(model: type[Model]) -> None:
    """Connect the invalidation handlers for ``model`` (idempotent)."""
    for sender in _senders(model):
        uid = f"cachepatterns:{sender._meta.label}"
        signals.pre_save.connect(_pre_save, sender=sender, weak=False, dispatch_uid=uid)
        signals.post_save.connect(_post_save, sender=sender, weak=False, dispatch_uid=uid)
        signals.pre_delete.connect(_pre_delete, sender=sender, weak=False, dispatch_uid=uid)
        signals.post_delete.connect(_post_delete, sender=sender, weak=False, dispatch_uid=uid)
    if not apps.models_ready:
        return
    _connect_links(model)
    _connect_on_delete(model)


def _connect_links(model: type[Model]) -> None:
    relations: list[Any] = [*model._meta.many_to_many, *model._meta.related_objects]
    for relation in relations:
        if not relation.many_to_many:
            continue
        rel = relation if isinstance(relation, ManyToManyRel) else relation.remote_field
        through = getattr(rel, "through", None)
        if not (isinstance(through, type) and issubclass(through, Model)):
            continue
        uid = f"cachepatterns:m2m:{through._meta.label}"
        signals.m2m_changed.connect(_m2m_changed, sender=through, weak=False, dispatch_uid=uid)
        # Link rows written directly (through.objects.create(), .delete(), and with
        # the adopted manager bulk_create()/update()) report both ends' rows.
        _link_models.add(through)
        signals.post_save.connect(_link_saved, sender=through, weak=False, dispatch_uid=uid)
        signals.post_delete.connect(_link_deleted, sender=through, weak=False, dispatch_uid=uid)
        field = relation.field if isinstance(relation, ManyToManyRel) else relation
        if isinstance(relation, ManyToManyRel):
            other, to_other, to_model = (
                relation.related_model,
                field.m2m_field_name(),
                field.m2m_reverse_field_name(),
            )
        else:
            other, to_other, to_model = (
                field.related_model,
                field.m2m_reverse_field_name(),
                field.m2m_field_name(),
            )
        if isinstance(other, type):
            signals.pre_delete.connect(
                _unlinking_handler(model, through, f"{to_other}_id", f"{to_model}_id"),
                sender=other,
                weak=False,
                dispatch_uid=f"{uid}:unlink:{model._meta.label}",
            )


def _connect_on_delete(model: type[Model]) -> None:
    for field in model._meta.concrete_fields:
        if not isinstance(field, models.ForeignKey):
            continue
        target: Any = field.related_model
        if not isinstance(target, type):
            continue
        on_delete = field.remote_field.on_delete
        db_level = _db_on_delete(field)
        if db_level == "DB_CASCADE":
            handler = _db_cascade_handler(model, field)
        elif db_level is not None or on_delete not in (
            models.CASCADE,
            models.PROTECT,
            models.RESTRICT,
            models.DO_NOTHING,
        ):
            handler = _set_on_delete_handler(model, field)
        else:
            continue
        signals.pre_delete.connect(
            handler,
            sender=target,
            weak=False,
            dispatch_uid=f"cachepatterns:ondelete:{model._meta.label}.{field.name}",
        )


def connect_all() -> None:
    """Connect handlers for every model registered so far (called from ``ready()``)."""
    for model in watched_models():
        connect_model(model)


def link_models() -> set[type[Model]]:
    """Return the many-to-many link models whose writes are reported."""
    return set(_link_models)
