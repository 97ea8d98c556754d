"""The front desk's "arrived" mark for booked visits (lifecycle.FACTS["checked_in"]): a fact,
not a transition; the visit stays scheduled until the provider starts it."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from django.db import transaction
from django.utils import timezone

from accounts.models import Role, User
from consultations import lifecycle
from consultations.models import Consultation
from consultations.services._common import _invalidate_for
from medease.exceptions import Conflict, Forbidden, NotFound

CHECKED_IN = lifecycle.FACTS["checked_in"]


def _authorize(*, consultation: Consultation, actor: User) -> str:
    """The stamped field for the actor: clinic roles who can see the visit (others: 404/403)."""
    if not (actor.is_superuser or consultation.is_visible_to(actor)):
        raise NotFound("Consultation not found.")
    field = CHECKED_IN.stamps.get(actor.role) or (
        CHECKED_IN.stamps[Role.STAFF] if actor.is_superuser else None
    )
    if field is None:
        raise Forbidden("Only the clinic checks patients in.")
    return field


def _clinic_day(consultation: Consultation, moment):
    tz = ZoneInfo(consultation.organization.timezone or "UTC")
    return moment.astimezone(tz).date()


def consultation_check_in(*, consultation: Consultation, actor: User) -> Consultation:
    """Mark a booked visit's patient as arrived, on the visit's day (a second mark keeps the
    first time)."""
    field = _authorize(consultation=consultation, actor=actor)
    now = timezone.now()
    if _clinic_day(consultation, consultation.scheduled_start) != _clinic_day(consultation, now):
        raise Conflict("A patient is checked in on the day of their visit.", code="not_today")
    with transaction.atomic():
        # Conditional: only a scheduled visit not yet checked in; of two desks, one stamps.
        changed = Consultation.objects.filter(
            pk=consultation.pk, status__in=CHECKED_IN.while_in, **{f"{field}__isnull": True}
        ).update(**{field: now, "checked_in_by": actor})
        if changed != 1:
            current = Consultation.objects.filter(pk=consultation.pk).values(
                "status", field, "checked_in_by"
            )[0]
            if current[field] is not None and current["status"] in CHECKED_IN.while_in:
                consultation.checked_in_at = current[field]
                consultation.checked_in_by_id = current["checked_in_by"]
                return consultation
            raise Conflict(
                f"A consultation that is {current['status']} cannot be checked in.",
                code="invalid_transition",
            )
        consultation.checked_in_at, consultation.checked_in_by = now, actor
        _invalidate_for(consultation, slots=False)
    return consultation


def consultation_check_in_undo(*, consultation: Consultation, actor: User) -> Consultation:
    """Take back an "arrived" mark made by mistake: the same day only, while still scheduled."""
    field = _authorize(consultation=consultation, actor=actor)
    now = timezone.now()
    with transaction.atomic():
        row = (
            Consultation.objects.select_for_update()
            .filter(pk=consultation.pk)
            .values("status", field)
            .first()
        )
        if row is None:
            raise NotFound("Consultation not found.")
        if row[field] is None:
            consultation.checked_in_at, consultation.checked_in_by = None, None
            return consultation
        if row["status"] not in CHECKED_IN.while_in:
            raise Conflict(
                f"A consultation that is {row['status']} keeps its check-in.",
                code="invalid_transition",
            )
        if _clinic_day(consultation, row[field]) != _clinic_day(consultation, now):
            raise Conflict("A check-in can be undone on its own day only.", code="too_late")
        Consultation.objects.filter(pk=consultation.pk).update(
            **{field: None, "checked_in_by": None}
        )
        consultation.checked_in_at, consultation.checked_in_by = None, None
        _invalidate_for(consultation, slots=False)
    return consultation
