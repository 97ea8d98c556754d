"""Consultations the requesting user may see, and their chat's unread counts."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from django.db.models import QuerySet

from accounts.models import User
from consultations.models import Consultation
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
