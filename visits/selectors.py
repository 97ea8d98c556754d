"""Reads of the video visit, scoped by the requesting user (another user's call is 404)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Prefetch

from accounts.models import User
from consultations import lifecycle
from consultations.models import Consultation
from consultations.selectors import consultation_get_for_user
from medease.exceptions import Conflict, NotFound
from visits.models import Call, CallParticipant


def call_with_participants(*, call_id: int) -> Call:
    """A call with its stays loaded, as the payload shows them."""
    return (
        Call.objects.select_related("consultation")
        .prefetch_related(
            Prefetch("participants", queryset=CallParticipant.objects.order_by("joined_at", "id"))
        )
        .filter(pk=call_id)
        .get()
    )


def call_get_for_user(*, user: User, consultation_id: int) -> Call:
    """The call of a consultation the user may see (participants, clinic staff), or NotFound
    (also when nobody ever joined it)."""
    consultation = consultation_get_for_user(user=user, consultation_id=consultation_id)
    call_id = Call.objects.filter(consultation_id=consultation.pk).values_list("pk", flat=True)
    call_id = call_id.first()
    if call_id is None:
        raise NotFound("Nobody has joined this consultation's call yet.")
    return call_with_participants(call_id=call_id)


def call_signal_check(*, sender_id: int, recipient_id: int, consultation_id: int) -> None:
    """A call.signal may pass only between two users who are in the call now, while the
    consultation is open; otherwise Conflict ``not_in_call``. One query."""
    in_call = set(
        CallParticipant.objects.filter(
            call__consultation_id=consultation_id,
            call__consultation__status__in=lifecycle.FACTS["joined"].while_in,
            left_at__isnull=True,
            user_id__in={sender_id, recipient_id},
        ).values_list("user_id", flat=True)
    )
    if sender_id not in in_call:
        raise Conflict("Join the call (POST …/call) before signaling.", code="not_in_call")
    if recipient_id == sender_id or recipient_id not in in_call:
        raise Conflict("That user is not in the call.", code="not_in_call")


def overdue_visits(*, now: datetime, **filters) -> list[Consultation]:
    """Visits matching ``filters`` (status, who joined the call) whose scheduled end plus
    VISIT_NO_SHOW_GRACE_MINUTES has passed, with the names a notice needs: the oldest 500
    (the beat jobs catch up run by run)."""
    grace = timedelta(minutes=settings.VISIT_NO_SHOW_GRACE_MINUTES)
    return list(
        Consultation.objects.filter(scheduled_end__lt=now - grace, **filters)
        .select_related("patient", "provider", "organization")
        .order_by("id")[:500]
    )
