"""What the clinic core tells people, through the workers outbox.

Consultation events (booked, cancelled, rescheduled, started, no-show), the walk-in queue's
"you are next", and the 24 h / 1 h reminders. Each writes outbox rows with
``workers.services.notification_record`` in the caller's transaction; the dedupe keys make
every event idempotent. ``still_relevant`` is registered with workers.relevance (see
ConsultationsConfig.ready) so that a reminder or confirmation held back meanwhile (quiet
hours, retries) is skipped once its consultation was cancelled or moved.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from consultations.models import Consultation, ConsultationStatus
from workers import relevance
from workers.models import Notification, NotificationKind
from workers.services import notification_record
from workers.services.outbox import LOOK_UP

CONSULTATION_EVENT_KINDS = (
    NotificationKind.BOOKING_CONFIRMED,
    NotificationKind.CONSULTATION_CANCELLED,
    NotificationKind.CONSULTATION_RESCHEDULED,
    NotificationKind.NO_SHOW_MARKED,
    NotificationKind.CONSULTATION_STARTED,
)
# Each reminder and how long before the start it is due. A consultation inside the 1 h
# window gets only the 1 h reminder, even if the 24 h one was missed (downtime).
REMINDERS = (
    (NotificationKind.REMINDER_1H, timedelta(hours=1)),
    (NotificationKind.REMINDER_24H, timedelta(hours=24)),
)
REMINDER_KINDS = frozenset(kind for kind, _ in REMINDERS)
# Kinds that are pointless once their consultation is cancelled (checked at delivery).
CHECKED_AT_DELIVERY = REMINDER_KINDS | {
    NotificationKind.BOOKING_CONFIRMED,
    NotificationKind.CONSULTATION_RESCHEDULED,
}


def _consultation_payload(consultation: Consultation) -> dict:
    # Names and times only: no reason for the visit or notes (PHI stays out of inboxes).
    return {
        "consultation_id": consultation.pk,
        "patient_id": consultation.patient_id,
        "provider_id": consultation.provider_id,
        "scheduled_start": consultation.scheduled_start.astimezone(UTC).isoformat(),
        "scheduled_end": consultation.scheduled_end.astimezone(UTC).isoformat(),
        "provider_name": consultation.provider.full_name,
        "patient_name": consultation.patient.full_name,
        "organization_name": consultation.organization.name,
    }


def _acted_by_id(consultation: Consultation, kind: str) -> int | None:
    """Who cancelled (or, for a reschedule, cancelled the consultation it replaces)."""
    if kind == NotificationKind.CONSULTATION_RESCHEDULED:
        previous = consultation.rescheduled_from if consultation.rescheduled_from_id else None
        return previous.cancelled_by_id if previous is not None else None
    return consultation.cancelled_by_id


def _actor_role(consultation: Consultation, kind: str, actor) -> str | None:
    actor_id = getattr(actor, "pk", None) or _acted_by_id(consultation, kind)
    if actor_id is None:
        return None
    if actor_id == consultation.patient_id:
        return "patient"
    if actor_id == consultation.provider_id:
        return "provider"
    return "clinic"


def _recipients(consultation: Consultation, kind: str, actor) -> list:
    patient, provider = consultation.patient, consultation.provider
    if kind in (NotificationKind.CONSULTATION_CANCELLED, NotificationKind.CONSULTATION_RESCHEDULED):
        # To the other party; staff acting for the clinic leaves both parties to inform.
        actor_id = getattr(actor, "pk", None) or _acted_by_id(consultation, kind)
        return [user for user in (patient, provider) if user.pk != actor_id]
    return [patient]


def notify_consultation_event(
    *,
    consultation: Consultation,
    kind: str,
    actor=None,
    preferences: dict | None = None,
    created: bool = False,
) -> list[Notification]:
    """Outbox rows for a consultation event.

    ``kind`` is one of ``booking_confirmed``, ``consultation_cancelled``,
    ``consultation_rescheduled``, ``no_show_marked``, ``consultation_started``. Booking,
    start and no-show go to the patient; a cancellation or a reschedule to the other party
    (``actor``, or the consultation's ``cancelled_by``; both parties when staff acted). For
    a reschedule pass the new consultation. Call inside the event's transaction.

    ``preferences``: recipients' preferences the caller has read already ({user id:
    NotificationPreference or None}). ``created``: the consultation was created in this
    transaction, so no earlier outbox row can hold its dedupe keys.
    """
    if kind not in CONSULTATION_EVENT_KINDS:
        raise ValueError(f"not a consultation event kind: {kind!r}")
    payload = _consultation_payload(consultation)
    if kind in (NotificationKind.CONSULTATION_CANCELLED, NotificationKind.CONSULTATION_RESCHEDULED):
        payload["actor_role"] = _actor_role(consultation, kind, actor)
    if consultation.rescheduled_from_id:
        previous = consultation.rescheduled_from
        payload["previous_start"] = previous.scheduled_start.astimezone(UTC).isoformat()
    written = []
    for user in _recipients(consultation, kind, actor):
        notification = notification_record(
            user=user,
            kind=kind,
            dedupe_key=f"consultation:{consultation.pk}:{kind}:user:{user.pk}",
            payload=payload,
            consultation_id=consultation.pk,
            preference=(preferences or {}).get(user.pk, LOOK_UP),
            new_key=created,
        )
        if notification is not None:
            written.append(notification)
    return written


def notify_queue_called(*, entry) -> Notification | None:
    """Outbox row telling a walk-in patient they are next."""
    payload = {
        "queue_entry_id": entry.pk,
        "provider_name": entry.provider.full_name,
        "organization_name": entry.organization.name,
        "called_at": (entry.called_at or timezone.now()).astimezone(UTC).isoformat(),
    }
    return notification_record(
        user=entry.patient,
        kind=NotificationKind.QUEUE_CALLED,
        dedupe_key=f"queue-entry:{entry.pk}:called",
        payload=payload,
        consultation_id=entry.consultation_id,
    )


# --- Reminders ----------------------------------------------------------------------------


# Apps above this one add to a reminder's payload (the video visits app: the patient's
# join link, ``join_url``, which the reminder templates show when present). Registered at
# start-up, so the dependency runs one way: visits imports consultations, never the reverse.
ReminderExtras = Callable[[Consultation], dict]
_reminder_extras: list[ReminderExtras] = []


def reminder_extras_register(extras: ReminderExtras) -> None:
    """Install ``extras(consultation) -> dict``, merged into every reminder's payload."""
    if extras not in _reminder_extras:
        _reminder_extras.append(extras)


def _reminder_payload(consultation: Consultation) -> dict:
    payload = _consultation_payload(consultation)
    for extras in _reminder_extras:
        payload.update(extras(consultation))
    return payload


def _reminder_key(consultation_id: int, kind: str, user_id: int) -> str:
    return f"consultation:{consultation_id}:{kind}:user:{user_id}"


def reminders_create_due(*, now: datetime | None = None, batch: int | None = None) -> int:
    """Write the reminders that are due; each consultation and kind gets one, ever.

    Due: the consultation is still ``scheduled``, starts in the future, within the
    reminder's lead time, and was booked before that lead time began (a booking made 3 h
    ahead gets its confirmation and the 1 h reminder, not a "tomorrow" one). Running this
    twice, concurrently, or after downtime writes each reminder once (the dedupe key
    decides) and never one for a consultation that has started or ended.
    """
    now = now or timezone.now()
    batch = batch or settings.NOTIFICATION_REMINDERS_BATCH
    written = 0
    previous_lead = timedelta(0)
    for kind, lead in REMINDERS:
        already = Notification.objects.filter(
            consultation_id=OuterRef("pk"), kind=kind, user_id=OuterRef("patient_id")
        )
        due = (
            Consultation.objects.filter(
                status=ConsultationStatus.SCHEDULED,
                scheduled_start__gt=now + previous_lead,
                scheduled_start__lte=now + lead,
                created_at__lt=F("scheduled_start") - lead,
            )
            .exclude(Exists(already))
            .select_related(
                "patient", "patient__notification_preference", "provider", "organization"
            )
            .order_by("scheduled_start", "id")[:batch]
        )
        for consultation in due:
            with transaction.atomic():
                notification = notification_record(
                    user=consultation.patient,
                    kind=kind,
                    dedupe_key=_reminder_key(consultation.pk, kind, consultation.patient_id),
                    payload=_reminder_payload(consultation),
                    consultation_id=consultation.pk,
                    # Never after the start: a late reminder is worse than none.
                    expires_at=consultation.scheduled_start,
                    now=now,
                )
            written += notification is not None
        previous_lead = lead
    return written


# --- Relevance at delivery time ------------------------------------------------------------


def still_relevant(notification: Notification, now: datetime) -> str | None:
    """Why a consultation notification should no longer be sent, or None if it should."""
    if not notification.consultation_id:
        return None
    current = (
        Consultation.objects.filter(pk=notification.consultation_id)
        .values("status", "scheduled_start")
        .first()
    )
    if current is None or current["status"] == ConsultationStatus.CANCELLED:
        # E.g. a confirmation held by quiet hours, and the patient cancelled meanwhile.
        return "the consultation was cancelled"
    if notification.kind in REMINDER_KINDS:
        if current["status"] != ConsultationStatus.SCHEDULED:
            return "the consultation is no longer scheduled"
        scheduled = current["scheduled_start"].astimezone(UTC).isoformat()
        if scheduled != notification.payload.get("scheduled_start"):
            return "the consultation was moved"
    return None


def register_relevance_checks() -> None:
    """Plug ``still_relevant`` into the outbox's delivery (called from AppConfig.ready)."""
    relevance.register_relevance_check(kinds=CHECKED_AT_DELIVERY, check=still_relevant)
