"""
Connect model signals to cache invalidation, and turn "these rows changed" into
Redis commands that run after commit.

Per-instance writes arrive as ``pre_save``/``post_save``/``post_delete``; bulk
writes arrive from the app's querysets (``managers``), which call
:func:`rows_changed` directly. Both end in :func:`rows_changed`, so the rules of
what a changed row invalidates live in one place:

- its own row key (and the row keys of multi-table-inheritance parents);
- every family that depends on its model, for the values it had *before* the
  write (read with ``SELECT … FOR UPDATE`` when inside a transaction) and the
  values it has after, so a row moving between owners invalidates both.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.apps import apps
from django.db import connections, models
from django.db.models import ManyToManyRel, Model, signals

from cachepatterns_app.identity import NotCanonical
from cachepatterns_app.invalidation import Command, after_commit
from cachepatterns_app.registry import dependencies_of, row_cache_for, watched_models

__all__ = ["connect_all", "connect_model", "old_rows", "rows_changed"]

logger = logging.getLogger(__name__)

_OLD = "_cachepatterns_old"


def rows_changed(
    model: type[Model],
    using: str,
    pks: Sequence[Any],
    *,
    old: Iterable[Model] = (),
    new: Iterable[Model] = (),
    deleted: bool = False,
    saved: Model | None = None,
    update_fields: Any = None,
    rows: bool = True,
    refresh: bool = True,
) -> None:
    """
    Schedule everything that rows ``pks`` of ``model`` changing invalidates.

    ``rows=False`` leaves the rows' own keys alone (a many-to-many change alters
    what depends on a row, not the row); ``refresh=False`` only drops them, where a
    write-through cache would otherwise put the rows back.
    """
    commands: list[tuple[Command, str]] = []
    callbacks: list[Callable[[], None]] = []
    caches = _caches(model) if rows else []
    for cache in caches:
        # A multi-table child's write also wrote its parents' rows (same pk).
        if deleted:
            commands.extend(cache.deletion(pks, using))
            continue
        if saved is not None:
            more, callback = cache.saved(saved, using, update_fields)
            commands.extend(more)
        else:
            commands.extend(cache.invalidation(pks, using))
            callback = cache.bulk_written(pks, using) if refresh else None
        if callback is not None:
            callbacks.append(callback)
    dependencies = dependencies_of(model)
    if dependencies:
        changed = [*old, *new]
        for dependency in dependencies:
            for row in changed:
                for params in dependency.params(row):
                    try:
                        commands.append(dependency.family.bump(params, using))
                    except (TypeError, NotCanonical) as e:
                        # After the write, never raise: a value that cannot be keyed
                        # cannot have been cached under that family either.
                        logger.error("Cannot invalidate %r for %r: %s", dependency.family, params, e)
    labels = [cache.label for cache in caches]
    if commands or callbacks or labels:
        # Even with nothing to send (a bulk insert that returned no primary keys), the
        # transaction must be known to have written these models: no fills from it.
        after_commit(commands, using, _chain(callbacks), labels=labels)


def _chain(callbacks: list[Callable[[], None]]) -> Callable[[], None] | None:
    if len(callbacks) < 2:
        return callbacks[0] if callbacks else None

    def run_all() -> None:
        for callback in callbacks:
            callback()

    return run_all


def _caches(model: type[Model]) -> list[Any]:
    return [c for c in (row_cache_for(k) for k in [model, *model._meta.get_parent_list()]) if c is not None]


def old_rows(queryset: models.QuerySet[Any]) -> list[Model]:
    """
    Return the rows of ``queryset`` as they are before a write, loading only the
    fields the dependencies read (nothing if the model has no dependencies).
    Inside a transaction the rows are locked until commit, so no concurrent writer
    can move them between this read and the write.
    """
    model = queryset.model
    if not dependencies_of(model):
        return []
    own: Any = queryset
    if own._fields is not None or queryset.query.select_related or queryset.query.deferred_loading[0]:
        # values(), select_related() or only() would clash with the only() below:
        # select the same rows as plain model rows.
        queryset = models.QuerySet(model, using=queryset.db).filter(pk__in=queryset.values("pk"))
    fields = _dependency_fields(model)
    if fields:
        queryset = queryset.only(*fields)
    connection = connections[queryset.db]
    if connection.in_atomic_block and connection.features.has_select_for_update:
        queryset = queryset.select_for_update()
    return list(queryset)


def _dependency_fields(model: type[Model]) -> set[str] | None:
    """Return the attribute names dependencies of ``model`` read (None: the whole row)."""
    names: set[str] = set()
    for dependency in dependencies_of(model):
        if not dependency.fields:
            return None
        names.update(dependency.fields)
    return names


# -- per-instance signal handlers ---------------------------------------------------------


def _pre_save(
    sender: type[Model], instance: Model, raw: bool, using: str, update_fields: Any, **kwargs: Any
) -> None:
    if raw:
        # Fixture loading: the instance must be saved exactly as given, so no version
        # bump and no lookups; post_save still invalidates.
        return
    for cache in _caches(sender):
        cache.before_save(instance, using, update_fields)
    if not dependencies_of(sender) or (instance._state.adding and instance.pk is None):
        return
    fields = _dependency_fields(sender)
    if update_fields is not None and fields is not None:
        written = set(update_fields)
        watched = {f for name in fields for f in _names(sender, name)}
        if not written & watched:
            return
    instance.__dict__[_OLD] = old_rows(models.QuerySet(sender, using=using).filter(pk=instance.pk))


def _names(model: type[Model], name: str) -> set[str]:
    field = model._meta.get_field(name)
    return {field.name, getattr(field, "attname", field.name)}


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
    if raw:
        rows_changed(sender, using, [instance.pk], new=[instance])
        return
    rows_changed(
        sender, using, [instance.pk], old=old, new=[instance], saved=instance, update_fields=update_fields
    )


def _post_delete(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
    rows_changed(sender, using, [instance.pk], old=[instance], deleted=True)


def _set_null_handler(child: type[Model], field: models.ForeignKey[Any, Any]) -> Callable[..., None]:
    """
    Deleting a parent row with ``on_delete=SET_NULL``/``SET_DEFAULT``/``SET()`` makes
    Django's collector update child rows with a plain ``UPDATE``: no signal tells
    us, so look up the children before the delete.
    """

    def handler(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
        children = old_rows(models.QuerySet(child, using=using).filter(**{field.name: instance}))
        pks = (
            [row.pk for row in children]
            if children
            else list(
                models.QuerySet(child, using=using)
                .filter(**{field.name: instance})
                .values_list("pk", flat=True)
            )
        )
        if not pks:
            return
        moved = []
        for row in children:
            clone = copy.copy(row)
            clone.__dict__[field.attname] = None
            moved.append(clone)
        rows_changed(child, using, pks, old=children, new=moved)

    return handler


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
    if action == "pre_clear":
        # clear() does not say which rows it unlinks: look before they are gone.
        manager_rows = _linked_pks(sender, instance, model, using)
        instance.__dict__[f"{_OLD}_m2m_{sender._meta.label}"] = manager_rows
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if action == "post_clear":
        pk_set = instance.__dict__.pop(f"{_OLD}_m2m_{sender._meta.label}", set())
    if dependencies_of(type(instance)):
        rows_changed(type(instance), using, [instance.pk], new=[instance], rows=False)
    if pk_set and dependencies_of(model):
        others: list[Model] = list(models.QuerySet(model, using=using).filter(pk__in=list(pk_set)))
        rows_changed(model, using, [o.pk for o in others], new=others, rows=False)


def _link_saved_or_deleted(sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
    """
    A row of a many-to-many table was written or deleted outside ``add()``/``remove()``:
    deleting a linked row (which removes its links without ``m2m_changed``), or a
    custom through model saved directly.
    """
    for field in sender._meta.concrete_fields:
        if not isinstance(field, models.ForeignKey):
            continue
        model = field.related_model
        if isinstance(model, type) and dependencies_of(model):
            rows: list[Model] = list(
                models.QuerySet(model, using=using).filter(pk=getattr(instance, field.attname))
            )
            rows_changed(model, using, [row.pk for row in rows], new=rows, rows=False)


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
            rows_changed(model, using, [row.pk for row in rows], new=rows, rows=False)

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
        for other in apps.get_models():
            if other._meta.concrete_model is concrete or concrete in other._meta.get_parent_list():
                senders.add(other)
    return senders


def connect_model(model: type[Model]) -> None:
    """Connect the invalidation handlers for ``model`` (idempotent)."""
    for sender in _senders(model):
        uid = f"cachepatterns:{sender._meta.label}"
        signals.pre_save.connect(_pre_save, sender=sender, weak=False, dispatch_uid=uid)
        signals.post_save.connect(_post_save, sender=sender, weak=False, dispatch_uid=uid)
        signals.post_delete.connect(_post_delete, sender=sender, weak=False, dispatch_uid=uid)
    if not apps.models_ready:
        return
    relations: list[Any] = [*model._meta.many_to_many, *model._meta.related_objects]
    for relation in relations:
        if relation.many_to_many:
            rel = relation if isinstance(relation, ManyToManyRel) else relation.remote_field
            through = getattr(rel, "through", None)
            if isinstance(through, type) and issubclass(through, Model):
                uid = f"cachepatterns:m2m:{through._meta.label}"
                signals.m2m_changed.connect(_m2m_changed, sender=through, weak=False, dispatch_uid=uid)
                if not through._meta.auto_created:
                    # A custom link model sends its own signals when saved or deleted.
                    for signal in (signals.post_delete, signals.post_save):
                        signal.connect(_link_saved_or_deleted, sender=through, weak=False, dispatch_uid=uid)
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
    for field in model._meta.concrete_fields:
        if not isinstance(field, models.ForeignKey) or field.remote_field.on_delete in (
            models.CASCADE,
            models.PROTECT,
            models.RESTRICT,
            models.DO_NOTHING,
        ):
            continue
        target = field.related_model
        if isinstance(target, type):
            signals.pre_delete.connect(
                _set_null_handler(model, field),
                sender=target,
                weak=False,
                dispatch_uid=f"cachepatterns:setnull:{model._meta.label}.{field.name}",
            )


def connect_all() -> None:
    """Connect handlers for every model registered so far (called from ``ready()``)."""
    for model in watched_models():
        connect_model(model)
