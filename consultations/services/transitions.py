"""Consultation transitions, driven by the table in ``consultations.lifecycle``.

``consultation_transition`` is the one writer of ``Consultation.status`` after creation: it
checks the table (who may, from which state), stamps the facts the table names, notifies and
invalidates caches. ``consultation_cancel`` and co. are thin wrappers kept for callers.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Role, User
from consultations import lifecycle, notifications
from consultations.lifecycle import Transition
from consultations.models import Consultation, ConsultationKind, ConsultationStatus, Slot
from consultations.services._common import (
    _conflict_from,
    _guard_provider_overlap,
    _invalidate_for,
)
from medease.exceptions import Conflict, Forbidden, InvalidInput, NotFound


def _authorize(*, actor: User | None, consultation: Consultation, transition: Transition) -> None:
    """Someone who may not see the consultation gets NotFound (never a hint that it exists);
    one who sees it but whose role may not take the action gets Forbidden. ``actor=None`` is
    the system (beat jobs); superusers may do everything."""
    if actor is None or actor.is_superuser:
        return
    if not consultation.is_visible_to(actor):
        raise NotFound("Consultation not found.")
    if actor.role not in transition.roles:
        allowed = " or ".join(lifecycle.actions_for_role(actor.role)) or "view"
        raise Forbidden(f"{Role(actor.role).label}s may only {allowed} their consultations.")


def _check_timing(*, actor: User | None, consultation: Consultation, transition: Transition):
    now = timezone.now()
    if transition.patient_cutoff and actor is not None and actor.role == Role.PATIENT:
        cutoff_minutes = settings.CONSULTATION_CANCEL_CUTOFF_MINUTES
        if now >= consultation.scheduled_start - timedelta(minutes=cutoff_minutes):
            raise Conflict(
                "It is too late to change this consultation; contact the clinic.",
                code="cancellation_closed",
            )
    if transition.after_start and now < consultation.scheduled_start:
        raise Conflict(
            f"A consultation cannot be {transition.verb} before its start time.",
            code="too_early",
        )


def _apply(
    *,
    consultation: Consultation,
    transition: Transition,
    actor: User | None,
    note: str | None,
) -> Consultation:
    """The conditional UPDATE: of two concurrent transitions from the same state exactly one
    changes the row; the other sees 0 rows and answers 409."""
    values: dict = {"status": transition.target, transition.stamp: timezone.now()}
    if transition.stamp_actor:
        values[transition.stamp_actor] = actor
    if transition.note_field and note is not None:
        values[transition.note_field] = note[: transition.note_max_length]
    changed = Consultation.objects.filter(pk=consultation.pk, status__in=transition.sources).update(
        **values
    )
    if changed != 1:
        current = (
            Consultation.objects.filter(pk=consultation.pk).values_list("status", flat=True).first()
        )
        raise Conflict(
            f"A consultation that is {current or 'gone'} cannot be {transition.verb}.",
            code="invalid_transition",
        )
    for field, value in values.items():
        setattr(consultation, field, value)
    return consultation


def _tell_closed_on_commit(*, consultation: Consultation, transition: Transition) -> None:
    """A consultation that leaves the active statuses tells the apps listening
    (``lifecycle.on_closed``: the video visit ends its call) once the change is committed."""
    if not lifecycle.is_active(transition.target):
        for listener in lifecycle.closed_listeners():
            transaction.on_commit(partial(listener, consultation.pk))


def consultation_transition(
    *,
    consultation: Consultation,
    action: str,
    actor: User | None,
    note: str | None = None,
) -> Consultation:
    """Take one action of the lifecycle table on a consultation (409 if its state forbids it).

    ``note`` is the free text the action records (a cancellation reason, provider notes).
    """
    transition = lifecycle.TRANSITIONS[action]
    if transition.path is None:
        raise ValueError(f"{action!r} has its own service")
    _authorize(actor=actor, consultation=consultation, transition=transition)
    _check_timing(actor=actor, consultation=consultation, transition=transition)
    with transaction.atomic():
        _apply(consultation=consultation, transition=transition, actor=actor, note=note)
        if transition.event:
            notifications.notify_consultation_event(
                consultation=consultation, kind=transition.event
            )
        _invalidate_for(consultation, slots=transition.frees_or_takes_time)
        _tell_closed_on_commit(consultation=consultation, transition=transition)
    return consultation


def consultation_cancel(
    *, consultation: Consultation, actor: User | None, reason: str = ""
) -> Consultation:
    """Cancel a scheduled consultation; its slot becomes bookable again."""
    return consultation_transition(
        consultation=consultation, action="cancel", actor=actor, note=reason
    )


def consultation_start(*, consultation: Consultation, actor: User | None) -> Consultation:
    """Start a scheduled consultation (a provider may start early)."""
    return consultation_transition(consultation=consultation, action="start", actor=actor)


def consultation_complete(
    *, consultation: Consultation, actor: User | None, provider_notes: str | None = None
) -> Consultation:
    """Complete a consultation in progress, optionally with the provider's notes."""
    return consultation_transition(
        consultation=consultation, action="complete", actor=actor, note=provider_notes
    )


def consultation_mark_no_show(*, consultation: Consultation, actor: User | None) -> Consultation:
    """Mark a scheduled consultation whose start has passed as a no-show."""
    return consultation_transition(consultation=consultation, action="no_show", actor=actor)


def consultation_mark_visit_no_show(
    *, consultation: Consultation, actor: User | None
) -> Consultation:
    """Mark a video visit as the patient's no-show: the provider joined the call (which
    started it), the patient never did. 409 ``patient_joined`` if the patient joined."""
    transition = lifecycle.TRANSITIONS["visit_no_show"]
    _authorize(actor=actor, consultation=consultation, transition=transition)
    _check_timing(actor=actor, consultation=consultation, transition=transition)
    with transaction.atomic():
        # Locked, so a patient joining right now is either seen here or refused by the
        # call (the consultation is no longer open when their join takes the lock).
        joined = (
            Consultation.objects.select_for_update(no_key=True)
            .filter(pk=consultation.pk)
            .values_list("patient_joined_at", flat=True)
            .first()
        )
        if joined is not None:
            raise Conflict("The patient joined this visit.", code="patient_joined")
        _apply(consultation=consultation, transition=transition, actor=actor, note=None)
        notifications.notify_consultation_event(consultation=consultation, kind=transition.event)
        _invalidate_for(consultation, slots=transition.frees_or_takes_time)
        _tell_closed_on_commit(consultation=consultation, transition=transition)
    return consultation


def consultation_reschedule(
    *, consultation: Consultation, actor: User | None, slot_id: int
) -> Consultation:
    """Move a scheduled consultation to another slot of the same provider, atomically:
    the old one is cancelled and the new one booked in one transaction, or neither."""
    transition = lifecycle.TRANSITIONS["reschedule"]
    _authorize(actor=actor, consultation=consultation, transition=transition)
    _check_timing(actor=actor, consultation=consultation, transition=transition)
    slot = Slot.objects.filter(pk=slot_id).first()
    if slot is None or slot.provider_id != consultation.provider_id:
        raise InvalidInput(
            "Choose another slot of the same provider.",
            fields={"slot": ["No such slot for this provider."]},
        )
    if slot.start <= timezone.now():
        raise Conflict("This slot has already started.", code="slot_unavailable")
    try:
        with transaction.atomic():
            old = _apply(
                consultation=consultation, transition=transition, actor=actor, note="rescheduled"
            )
            new = Consultation.objects.create(
                patient_id=old.patient_id,
                provider_id=old.provider_id,
                organization_id=old.organization_id,
                slot=slot,
                kind=ConsultationKind.BOOKED,
                status=ConsultationStatus.SCHEDULED,
                reason=old.reason,
                scheduled_start=slot.start,
                scheduled_end=slot.end,
                rescheduled_from=old,
            )
            _guard_provider_overlap(
                provider_id=slot.provider_id, start=slot.start, end=slot.end, exclude_id=new.pk
            )
            notifications.notify_consultation_event(
                consultation=new, kind="consultation_rescheduled"
            )
            _invalidate_for(new)
            _tell_closed_on_commit(consultation=old, transition=transition)
    except IntegrityError as exc:
        # Rolled back: the original consultation is still scheduled; drop in-memory changes.
        consultation.refresh_from_db()
        raise _conflict_from(exc) from exc
    return (
        Consultation.objects.select_related("patient", "provider", "organization")
        .filter(pk=new.pk)
        .get()
    )


def consultations_mark_overdue_no_shows() -> int:
    """Beat job: scheduled consultations never started by the end of their slot plus a grace
    period become no-shows, unless the patient joined the video visit (then the provider is
    the one absent: visits reports it, never as the patient's no-show). Safe to run twice
    (each transition is conditional)."""
    grace = timedelta(minutes=settings.CONSULTATION_NO_SHOW_GRACE_MINUTES)
    overdue = list(
        Consultation.objects.filter(
            status__in=lifecycle.TRANSITIONS["no_show"].sources,
            scheduled_end__lt=timezone.now() - grace,
            patient_joined_at__isnull=True,
        ).order_by("id")[:500]
    )
    marked = 0
    for consultation in overdue:
        try:
            consultation_mark_no_show(consultation=consultation, actor=None)
            marked += 1
        except Conflict:
            pass  # started or cancelled meanwhile: nothing to do
    return marked
