"""Consultations the requesting user may see, and their chat's unread counts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from django.db import connections, router
from django.db.models import QuerySet

from accounts.models import User
from consultations.models import Consultation, clinic_scope
from consultations.serializers import consultation_columns
from medease.exceptions import NotFound


def consultations_for_user(*, user: User, status: str | None = None) -> QuerySet[Consultation]:
    """The consultations the user may see, optionally of one status."""
    queryset = Consultation.objects.visible_to(user).select_related("patient", "provider")
    if status:
        queryset = queryset.filter(status=status)
    return queryset


def consultation_rows_for_user(
    *, user: User, clinician: bool, status: str | None = None
) -> QuerySet[Consultation]:
    """``consultations_for_user`` as ``values()`` rows with the body's columns only (see
    ``serializers.consultation_rows``): no model instances, no unused related objects."""
    queryset = Consultation.objects.visible_to(user)
    if status:
        queryset = queryset.filter(status=status)
    return queryset.values(*consultation_columns(clinician=clinician))


# The list's page query, compiled by the ORM once per shape and then only re-bound: its SQL
# compilation was about a quarter of the list's CPU. The ORM stays the one source of the
# query (visibility included); this only skips compiling the same statement again. A shape
# is everything that changes the SQL text: the caller's scope column (``clinic_scope``), a
# superuser, the columns, a status filter, a cursor position and its direction, and the
# slice (the ORM writes LIMIT/OFFSET into the SQL). Values differ per call and are bound.
_PAGE_STATEMENTS: dict[tuple, tuple[str, tuple]] = {}
_PAGE_STATEMENTS_MAX = 512
# Stand-ins compiled into a new shape's statement, each found again among its parameters.
_SCOPE = -1_987_654_321  # within every integer column's range
_STATUS = "\x00status"
_AFTER = datetime(1901, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)


def _page_statement(shape: tuple, *, user: User, clinician: bool, ordering) -> tuple[str, tuple]:
    """(sql, parameter slots) of a page of this shape; a slot is "scope", "status",
    "after" or ("const", value)."""
    statement = _PAGE_STATEMENTS.get(shape)
    if statement is not None:
        return statement
    _kind, superuser, _clinician, has_status, has_after, reverse, offset, limit = shape
    queryset = Consultation.objects.all()
    if not superuser:
        queryset = queryset.filter(**{shape[0]: _SCOPE})
    if has_status:
        queryset = queryset.filter(status=_STATUS)
    queryset = queryset.values(*consultation_columns(clinician=clinician))
    first = ordering[0]
    if has_after:
        # As DRF's CursorPagination: strictly after (before) the position on the first key.
        queryset = queryset.filter(**{f"{first}__{'lt' if reverse else 'gt'}": _AFTER})
    order = [f"-{field}" if reverse else field for field in ordering]
    sql, params = queryset.order_by(*order)[offset : offset + limit].query.sql_with_params()
    stand_ins = {_SCOPE: "scope", _STATUS: "status", _AFTER: "after"}
    slots = tuple(stand_ins.get(value, ("const", value)) for value in params)
    if len(_PAGE_STATEMENTS) >= _PAGE_STATEMENTS_MAX:
        _PAGE_STATEMENTS.clear()
    _PAGE_STATEMENTS[shape] = (sql, slots)
    return sql, slots


def consultation_rows_page(
    *,
    user: User,
    clinician: bool,
    ordering: tuple[str, ...],
    status: str | None = None,
    after: datetime | None = None,
    reverse: bool = False,
    offset: int = 0,
    limit: int,
) -> list[dict]:
    """One page of ``consultation_rows_for_user`` (the same rows, from the same SQL) in
    ``ordering`` (or reversed), after (before, if ``reverse``) the position ``after`` of the
    first ordering field, skipping ``offset`` rows: what a cursor page asks for."""
    superuser = bool(getattr(user, "is_superuser", False))
    scope = None if superuser else clinic_scope(user)
    if scope is None and not superuser:
        return []  # visible_to(): no clinic role, no rows
    shape = (
        scope[0] if scope else None,
        superuser,
        clinician,
        bool(status),
        after is not None,
        reverse,
        offset,
        limit,
    )
    sql, slots = _page_statement(shape, user=user, clinician=clinician, ordering=ordering)
    values = {"scope": scope[1] if scope else None, "status": status, "after": after}
    params = [values[slot] if isinstance(slot, str) else slot[1] for slot in slots]
    names = consultation_columns(clinician=clinician)
    with connections[router.db_for_read(Consultation)].cursor() as cursor:
        cursor.execute(sql, params)
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def consultation_row_get_for_user(*, user: User, consultation_id: int, clinician: bool) -> dict:
    """One consultation's ``values()`` row (as ``consultation_rows_for_user``), or NotFound."""
    rows = list(
        consultation_rows_for_user(user=user, clinician=clinician)
        .filter(pk=consultation_id)
        .order_by()[:1]
    )
    if not rows:
        raise NotFound("Consultation not found.")
    return rows[0]


def consultation_get_for_user(*, user: User, consultation_id: int) -> Consultation:
    """One consultation the user may see, or NotFound (also when it exists but is not theirs).

    The chat (messaging) relies on this name and behaviour.
    """
    consultation = (
        consultations_for_user(user=user)
        .select_related("organization")
        .filter(pk=consultation_id)
        .first()
    )
    if consultation is None:
        raise NotFound("Consultation not found.")
    return consultation


# The chat (messaging) owns messages and read markers and registers its counter here at
# start-up, so the dependency runs one way: messaging imports consultations, never the
# reverse. Without a registered counter (no chat installed) every count is 0.
UnreadCounter = Callable[..., dict[int, int]]
_unread_counter: list[UnreadCounter] = []


def unread_counter_register(counter: UnreadCounter) -> None:
    """Install ``counter(*, user, consultation_ids) -> {consultation id: unread}``."""
    _unread_counter[:] = [counter]


def unread_counts_for(*, user: User, consultation_ids: Iterable[int]) -> dict[int, int]:
    """Unread chat messages per consultation for the user (one query: lists, dashboard)."""
    ids = list(consultation_ids)
    if not _unread_counter:
        return dict.fromkeys(ids, 0)
    return _unread_counter[0](user=user, consultation_ids=ids)


def unread_count_for(*, user: User, consultation: Consultation) -> int:
    """Unread chat messages of one consultation for the user."""
    return unread_counts_for(user=user, consultation_ids=[consultation.pk]).get(consultation.pk, 0)
