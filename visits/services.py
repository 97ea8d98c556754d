"""Every write of the video visit: joining and leaving the call, ending it with its
consultation. Each owns its transaction; ``call.state`` goes out after commit.

Locks are taken in one order, consultation row then call row, by every writer that holds
both, so two joins at once (patient and provider clicking together) queue behind each other
instead of deadlocking or computing the call's status from a stale list of who is in.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts.models import Role, User
from accounts.selectors import organization_members
from consultations import lifecycle
from consultations import notifications as clinic_notifications
from consultations.models import Consultation, ConsultationStatus
from consultations.services import consultation_mark_visit_no_show, consultation_start
from medease.exceptions import Conflict, Forbidden, NotFound
from visits import events
from visits.models import Call, CallParticipant, CallStatus
from visits.selectors import call_with_participants, overdue_visits
from visits.serializers import call_payload
from workers.services import notification_record

logger = logging.getLogger("medease.visits")

JOINED = lifecycle.FACTS["joined"]


def _side(consultation: Consultation, user: User) -> str | None:
    """``patient`` or ``provider`` when the user is that side of the consultation."""
    if user.pk == consultation.patient_id:
        return lifecycle.PATIENT
    if user.pk == consultation.provider_id:
        return lifecycle.PROVIDER
    return None


def _settle_status(*, call: Call, consultation: Consultation, consultation_status: str) -> bool:
    """Derive the call's status from who is in now; save it. True when it changed."""
    now = timezone.now()
    inside = set(call.participants.filter(left_at__isnull=True).values_list("user_id", flat=True))
    if consultation_status not in JOINED.while_in or not inside:
        status = CallStatus.ENDED
    elif {consultation.patient_id, consultation.provider_id} <= inside:
        status = CallStatus.ACTIVE
    else:
        status = CallStatus.WAITING
    if status == call.status:
        return False
    call.status = status
    if status == CallStatus.ACTIVE and call.started_at is None:
        call.started_at = now
    call.ended_at = now if status == CallStatus.ENDED else None
    call.save(update_fields=["status", "started_at", "ended_at"])
    return True


def _broadcast(call: Call) -> None:
    payload = call_payload(call_with_participants(call_id=call.pk))
    events.send_on_commit(call.consultation_id, events.call_state_event(payload))


def call_join(*, consultation: Consultation, user: User) -> Call:
    """Join (or rejoin) the consultation's call as its patient or provider.

    Records the side's first join on the consultation (``lifecycle.FACTS["joined"]``), and a
    provider joining a scheduled consultation starts it. 409 once the consultation is closed.
    """
    side = _side(consultation, user)
    if side is None:
        raise Forbidden(
            "Only the consultation's patient and provider join its call.", code="not_participant"
        )
    with transaction.atomic():
        # FOR NO KEY UPDATE, like the chat's send: serializes joins of this consultation
        # (and orders them after any transition in flight) without blocking inserts that
        # merely reference the row.
        status = (
            Consultation.objects.select_for_update(no_key=True)
            .filter(pk=consultation.pk)
            .values_list("status", flat=True)
            .first()
        )
        if status not in JOINED.while_in:
            raise Conflict(
                f"A consultation that is {status or 'gone'} has no call to join.",
                code="consultation_closed",
            )
        # get_or_create under the one-to-one's unique index: a first join racing another
        # (outside this lock, e.g. a call row created by an admin) reads the winner's row.
        call, _created = Call.objects.get_or_create(consultation_id=consultation.pk)
        call = Call.objects.select_for_update().get(pk=call.pk)
        now = timezone.now()
        # A second tab of someone already in joins the same stay (the partial unique index
        # allows one open stay per user); after leaving, a rejoin is a new stay.
        _stay, entered = CallParticipant.objects.get_or_create(
            call=call, user=user, left_at=None, defaults={"joined_at": now}
        )
        field = JOINED.stamps[side]
        # Only the first join counts: the UPDATE matches while the fact is still unset.
        if Consultation.objects.filter(pk=consultation.pk, **{f"{field}__isnull": True}).update(
            **{field: now}
        ):
            setattr(consultation, field, now)
        if side == lifecycle.PROVIDER and status == ConsultationStatus.SCHEDULED:
            consultation_start(consultation=consultation, actor=user)
            status = consultation.status
        changed = _settle_status(call=call, consultation=consultation, consultation_status=status)
        if entered or changed:
            _broadcast(call)
    return call_with_participants(call_id=call.pk)


def call_leave(*, consultation: Consultation, user: User) -> None:
    """Leave the call (nothing to do when not in it); the last one out ends it."""
    if _side(consultation, user) is None:
        raise Forbidden(
            "Only the consultation's patient and provider join its call.", code="not_participant"
        )
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(consultation_id=consultation.pk).first()
        if call is None:
            raise NotFound("Nobody has joined this consultation's call yet.")
        left = call.participants.filter(user=user, left_at__isnull=True).update(
            left_at=timezone.now()
        )
        if not left:
            return
        status = Consultation.objects.filter(pk=consultation.pk).values_list("status", flat=True)
        _settle_status(call=call, consultation=consultation, consultation_status=status.get())
        _broadcast(call)


def call_end_for_consultation(*, consultation_id: int) -> bool:
    """End the call of a consultation that closed (completed, cancelled, no-show): everyone
    still in leaves. Safe to run twice; False when there was nothing to end."""
    with transaction.atomic():
        consultation = (
            Consultation.objects.select_for_update(no_key=True).filter(pk=consultation_id).first()
        )
        call = Call.objects.select_for_update().filter(consultation_id=consultation_id).first()
        if consultation is None or call is None:
            return False
        now = timezone.now()
        left = call.participants.filter(left_at__isnull=True).update(left_at=now)
        changed = _settle_status(
            call=call, consultation=consultation, consultation_status=consultation.status
        )
        if left or changed:
            _broadcast(call)
        return bool(left or changed)


def call_end_for_closed_consultation(consultation_id: int) -> None:
    """``consultations.lifecycle.on_closed`` listener: end the call; log, never raise (the
    consultation's transition has committed already)."""
    try:
        call_end_for_consultation(consultation_id=consultation_id)
    except Exception:
        logger.exception("ending the call of consultation %s failed", consultation_id)


# --- No-show attribution ------------------------------------------------------------------

PROVIDER_ABSENT = "provider_absent"


def visits_report_absent_providers(*, now: datetime | None = None) -> int:
    """Beat job: a visit whose patient joined the call but whose provider never did, by the
    scheduled end plus VISIT_NO_SHOW_GRACE_MINUTES, is reported to the patient and to the
    clinic's staff (outbox kind ``provider_absent``). It is never the patient's no-show.

    Safe to run twice: one row per consultation and recipient (the outbox's dedupe key).
    Returns the number of consultations reported.
    """
    now = now or timezone.now()
    overdue = overdue_visits(
        now=now,
        status=ConsultationStatus.SCHEDULED,
        patient_joined_at__isnull=False,
        provider_joined_at__isnull=True,
    )
    reported = 0
    for consultation in overdue:
        staff = organization_members(organization_id=consultation.organization_id).filter(
            role=Role.STAFF, is_active=True
        )
        recipients = [consultation.patient, *staff]
        # The clinic's other notifications' payload: names and times only (no reason, notes).
        payload = clinic_notifications._consultation_payload(consultation)
        with transaction.atomic():
            written = [
                notification_record(
                    user=user,
                    kind=PROVIDER_ABSENT,
                    dedupe_key=f"consultation:{consultation.pk}:{PROVIDER_ABSENT}:user:{user.pk}",
                    payload=payload,
                    consultation_id=consultation.pk,
                    now=now,
                )
                for user in recipients
            ]
        reported += any(row is not None for row in written)
    return reported


def provider_absent_still_true(notification, now) -> str | None:
    """Relevance check (workers.relevance): the provider joined after all, or the visit was
    cancelled, so the report is no longer worth sending."""
    consultation = (
        Consultation.objects.filter(pk=notification.consultation_id)
        .values("provider_joined_at", "status")
        .first()
    )
    if consultation is None:
        return "the consultation is gone"
    if consultation["provider_joined_at"] is not None:
        return "the provider joined the call"
    if consultation["status"] == ConsultationStatus.CANCELLED:
        return "the consultation was cancelled"
    return None


def visits_mark_patient_no_shows(*, now: datetime | None = None) -> int:
    """Beat job: a visit whose provider joined the call (which started it) but whose patient
    never did, by the scheduled end plus VISIT_NO_SHOW_GRACE_MINUTES, is the patient's
    no-show. Safe to run twice (the transition is conditional). Returns how many."""
    now = now or timezone.now()
    overdue = overdue_visits(
        now=now,
        status__in=lifecycle.TRANSITIONS["visit_no_show"].sources,
        provider_joined_at__isnull=False,
        patient_joined_at__isnull=True,
    )
    marked = 0
    for consultation in overdue:
        try:
            consultation_mark_visit_no_show(consultation=consultation, actor=None)
            marked += 1
        except Conflict:
            pass  # the patient joined, or it was completed meanwhile: not a no-show
    return marked
