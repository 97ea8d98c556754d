"""Consultations the requesting user may see, and their chat's unread counts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from types import SimpleNamespace

from django.db import DEFAULT_DB_ALIAS, connections, router
from django.db.models import QuerySet

from accounts.models import User
from consultations.models import Consultation, clinic_scope
from consultations.serializers import consultation_columns
from medease.exceptions import NotFound

try:
    from psycopg.types.datetime import TimestamptzLoader
except ImportError:  # psycopg2, or no PostgreSQL driver (SQLite)
    TimestamptzLoader = None


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


# The list's page and the detail's row come from statements the ORM compiles once per
# shape and that are then only re-bound: compiling them was about a quarter of the list's
# CPU. The ORM stays the one source of the SQL, visibility included (``visible_to`` builds
# it, for a stand-in user); this only skips compiling the same statement again. A shape is
# everything that changes the SQL text: what ``visible_to`` reads of the user (role,
# superuser, whether staff have a clinic), the columns, the filters present, the ordering
# and direction, and the slice (the ORM writes LIMIT/OFFSET into the SQL). Values are bound.
_STATEMENTS: dict[tuple, tuple] = {}
_STATEMENTS_MAX = 512
# Stand-ins compiled into a new shape's statement, each found again among its parameters.
_SCOPE = -1_987_654_321  # within every integer column's range
_PK = -1_987_654_322
_STATUS = "\x00status"
_AFTER = datetime(1901, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)


def _visibility(user: User) -> tuple[tuple, SimpleNamespace, int | None] | None:
    """(shape of ``visible_to(user)``, a stand-in user giving the same SQL with the scope
    value ``_SCOPE``, the real scope value); None when the user sees no row at all."""
    superuser = bool(getattr(user, "is_superuser", False))
    scope = clinic_scope(user)
    if scope is None and not superuser:
        return None
    has_clinic = getattr(user, "organization_id", None) is not None
    stand_in = SimpleNamespace(
        is_authenticated=True,
        is_superuser=superuser,
        role=user.role,
        pk=_SCOPE,
        organization_id=_SCOPE if has_clinic else None,
    )
    return (user.role, superuser, has_clinic), stand_in, scope[1] if scope else None


def _slot(value, stand_ins: dict):
    try:
        return stand_ins.get(value, ("const", value))
    except TypeError:  # unhashable (a list for __in): part of the shape
        return ("const", value)


def _prepared(field_name: str, value):
    """``value`` as the ORM binds it for the field (e.g. SQLite's datetimes are text)."""
    field = Consultation._meta.get_field(field_name)
    return field.get_db_prep_value(value, connections[DEFAULT_DB_ALIAS], prepared=False)


def _load_timestamptz_natively(cursor) -> None:
    """Load this cursor's timestamptz values with psycopg's own loader (its C one).

    Django registers a Python subclass of it on every connection (to set the tzinfo), which
    the C implementation cannot stand in for: a page's 7 datetimes x 21 rows cost about 1 ms
    of CPU that way, 0.3 ms this way. The values are equal: aware datetimes in the session's
    time zone, which Django sets to the connection's (UTC). Per cursor (psycopg copies the
    connection's adapters on write), so no other query is affected.
    """
    if TimestamptzLoader is not None:
        cursor.adapters.register_loader("timestamptz", TimestamptzLoader)


def _rows(
    shape: tuple,
    build: Callable[[], QuerySet],
    values: dict,
    names,
    *,
    after_field: str = "scheduled_start",
) -> list[dict]:
    """The ``values()`` rows of ``build()`` (a queryset made with the stand-ins), from the
    shape's statement compiled once, with the stand-ins bound to ``values`` (slot name to
    the value as bound: ``_prepared`` where the ORM would convert it)."""
    statement = _STATEMENTS.get(shape)
    if statement is None:
        compiler = build().query.get_compiler(DEFAULT_DB_ALIAS)
        sql, params = compiler.as_sql()
        stand_ins = {_SCOPE: "scope", _PK: "pk", _STATUS: "status"}
        stand_ins[_prepared(after_field, _AFTER)] = "after"
        slots = tuple(_slot(value, stand_ins) for value in params)
        if {slot for slot in slots if isinstance(slot, str)} != set(values):
            # A value compiled into the SQL as something unrecognised would be bound as a
            # constant for every later call: refuse rather than answer the wrong rows.
            raise RuntimeError(f"statement {shape!r}: parameters not found in {params!r}")
        # What values() would convert the raw values with (none on PostgreSQL for these
        # columns; SQLite, the embedded default, returns datetimes as text).
        converters = compiler.get_converters(s[0] for s in compiler.select[: compiler.col_count])
        statement = (sql, slots, compiler, converters)
        if len(_STATEMENTS) >= _STATEMENTS_MAX:
            _STATEMENTS.clear()
        _STATEMENTS[shape] = statement
    sql, slots, compiler, converters = statement
    params = [values[slot] if isinstance(slot, str) else slot[1] for slot in slots]
    with connections[router.db_for_read(Consultation)].cursor() as cursor:
        if cursor.db.vendor == "postgresql":
            _load_timestamptz_natively(cursor.cursor)
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if converters:
        rows = compiler.apply_converters(rows, converters)
    return [dict(zip(names, row, strict=True)) for row in rows]


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
    visibility = _visibility(user)
    if visibility is None:
        return []  # visible_to(): no clinic role, no rows
    user_shape, stand_in, scope_value = visibility
    has_after = after is not None
    shape = ("page", user_shape, clinician, bool(status), has_after, ordering, reverse)
    shape += (offset, limit)

    def build() -> QuerySet:
        queryset = consultation_rows_for_user(
            user=stand_in, clinician=clinician, status=_STATUS if status else None
        )
        if has_after:
            # As DRF's CursorPagination: strictly after (before) the position on the first
            # ordering field, which is ascending (see CursorPagination.paginate_rows).
            queryset = queryset.filter(**{f"{ordering[0]}__{'lt' if reverse else 'gt'}": _AFTER})
        order = [f"-{field}" if reverse else field for field in ordering]
        return queryset.order_by(*order)[offset : offset + limit]

    values = {} if user_shape[1] else {"scope": scope_value}  # a superuser: no scope
    if status:
        values["status"] = status
    if has_after:
        values["after"] = _prepared(ordering[0], after)
    names = consultation_columns(clinician=clinician)
    return _rows(shape, build, values, names, after_field=ordering[0])


def consultation_row_get_for_user(*, user: User, consultation_id: int, clinician: bool) -> dict:
    """One consultation's ``values()`` row (as ``consultation_rows_for_user``), or NotFound
    (also when it exists but is not theirs)."""
    visibility = _visibility(user)
    rows = []
    # The ORM answers "no row" for an id no bigint holds; bound as is, it may not bind.
    if visibility is not None and -(2**63) <= consultation_id < 2**63:
        user_shape, stand_in, scope_value = visibility

        def build() -> QuerySet:
            queryset = consultation_rows_for_user(user=stand_in, clinician=clinician)
            return queryset.filter(pk=_PK).order_by()[:1]

        rows = _rows(
            ("row", user_shape, clinician),
            build,
            {"pk": consultation_id} | ({} if user_shape[1] else {"scope": scope_value}),
            consultation_columns(clinician=clinician),
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
