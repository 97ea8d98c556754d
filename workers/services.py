"""Every write to the notification outbox: recording events, delivering, retrying, sweeping.

Recording (``notify_*``, ``reminders_create_due``)
    Outbox rows are written in the caller's transaction, so a rolled-back booking notifies
    nobody; the delivery task is enqueued with ``transaction.on_commit``. A unique
    ``dedupe_key`` makes each event idempotent: two beat processes, a retried request or a
    job run twice write one row.

Delivering (``notification_deliver``), exactly once per row
    1. *Claim*: ``UPDATE ... SET status='sending', claim_token=<new>, lease_expires_at=now+lease
       WHERE id=? AND status='pending' AND next_attempt_at<=now``, committed on its own. It
       must change exactly one row; otherwise another worker has it, it was sent, or it is
       not due, and the task stops. A redelivered message (``acks_late`` after SIGKILL, or
       ``reject_on_worker_lost``) therefore finds the row ``sending`` and sends nothing.
    2. *Send*: render and connect first, then hand the message over.
    3. *Record*: ``sent_at`` is written, conditional on our claim token, immediately after
       the SMTP server accepted the message, before closing the connection or anything else.
    4. *Recover*: a row left ``sending`` past its lease (its worker was killed or hung) is
       handed back to ``pending`` by the sweeper and tried again. The lease is longer than
       the task's hard time limit (checked at start-up), so a live worker is never
       overtaken.

    What remains is at-least-once in one window: if the process dies after the server
    accepted the message (the reply to the final ``.`` of DATA) and before step 3 commits,
    the row is retried after its lease and the recipient may get the email twice. (So can
    a timeout while waiting for that reply: the server may have taken the message, but we
    cannot know, and we retry.) The window
    is one round-trip plus one single-row UPDATE (milliseconds); the retry carries the same
    Message-ID, which lets receiving systems that deduplicate by it show one copy. Closing
    that window entirely would need the receiver to deduplicate (idempotency keys), which
    SMTP does not offer. The opposite choice (never retry a row found stuck) would lose
    every email whose worker died before sending, which is the far more likely case.

Retrying
    A transient failure (connection refused, 4xx, timeout) puts the row back to ``pending``
    with an exponential, jittered ``next_attempt_at``; after NOTIFICATION_MAX_ATTEMPTS it is
    ``failed`` (counted in /metrics, resent from the admin). A permanent refusal (5xx for
    the recipient or the message) fails at once. Nothing is counted down past
    CELERY_MAX_COUNTDOWN_SECONDS (below the broker's visibility timeout): longer waits are
    picked up by the sweeper.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from medease import metrics
from medease.exceptions import InvalidInput
from workers.channels import PermanentDeliveryError, channel_for
from workers.models import (
    Notification,
    NotificationChannel,
    NotificationKind,
    NotificationPreference,
    NotificationStatus,
)

logger = logging.getLogger("medease.notifications")

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
_REMINDER_KINDS = {kind for kind, _ in REMINDERS}
# Kinds that are pointless once their consultation is cancelled (checked at delivery).
_CHECKED_AGAINST_CONSULTATION = _REMINDER_KINDS | {
    NotificationKind.BOOKING_CONFIRMED,
    NotificationKind.CONSULTATION_RESCHEDULED,
}
# A countdown may fire a hair before its ETA by the worker's clock: count that as due
# rather than leave the row to the sweeper.
DUE_TOLERANCE = timedelta(seconds=1)


# --- Preferences and quiet hours ----------------------------------------------------------


def _preference_of(user) -> NotificationPreference | None:
    try:
        return user.notification_preference
    except NotificationPreference.DoesNotExist:
        return None


def _user_timezone(user) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(user.timezone or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def quiet_hours_end(
    *, preference: NotificationPreference | None, tz: zoneinfo.ZoneInfo, now: datetime
) -> datetime | None:
    """When the quiet hours around ``now`` end (aware, UTC), or None outside quiet hours.

    Start and end are wall-clock times in the user's timezone; a window whose end is not
    after its start wraps midnight (22:00-07:00). DST is zoneinfo's business: an end that
    falls in a skipped hour resolves to the instant after the jump.
    """
    if preference is None or preference.quiet_hours_start is None:
        return None
    start, end = preference.quiet_hours_start, preference.quiet_hours_end
    if start == end:
        return None
    local = now.astimezone(tz)
    clock = local.time().replace(tzinfo=None)
    if start < end:
        inside = start <= clock < end
        end_date = local.date()
    else:  # wraps midnight
        inside = clock >= start or clock < end
        end_date = local.date() + timedelta(days=1) if clock >= start else local.date()
    if not inside:
        return None
    ends = datetime.combine(end_date, end, tzinfo=tz)
    # Round-trip through UTC normalises a non-existent local time (spring forward).
    ends = ends.astimezone(zoneinfo.ZoneInfo("UTC"))
    return ends if ends > now else now + timedelta(minutes=1)


def notification_preferences_update(
    *,
    user,
    muted_kinds: list[str] | None = None,
    quiet_hours_start=None,
    quiet_hours_end=None,
    set_quiet_hours: bool = False,
) -> NotificationPreference:
    """Change a user's muted kinds and/or quiet hours (``set_quiet_hours`` to change those)."""
    with transaction.atomic():
        preference, _ = NotificationPreference.objects.select_for_update().get_or_create(user=user)
        if muted_kinds is not None:
            unknown = sorted(set(muted_kinds) - set(NotificationKind.values))
            if unknown:
                raise InvalidInput(
                    "Unknown notification kinds.",
                    fields={"muted_kinds": [f"Unknown kind: {kind}" for kind in unknown]},
                )
            preference.muted_kinds = sorted(set(muted_kinds))
        if set_quiet_hours:
            if (quiet_hours_start is None) != (quiet_hours_end is None):
                raise InvalidInput(
                    "Give both ends of the quiet hours, or neither.",
                    fields={"quiet_hours": ["Give both ends, or neither."]},
                )
            if quiet_hours_start is not None and quiet_hours_start == quiet_hours_end:
                raise InvalidInput(
                    "Quiet hours must not start and end at the same time.",
                    fields={"quiet_hours_end": ["Must differ from the start."]},
                )
            preference.quiet_hours_start = quiet_hours_start
            preference.quiet_hours_end = quiet_hours_end
        preference.save()
    return preference


# --- Recording events -------------------------------------------------------------------


def _enqueue_delivery(notification_id: int, countdown: float | None = None) -> None:
    from workers.tasks import deliver_notification

    try:
        deliver_notification.apply_async(args=[notification_id], countdown=countdown)
    except Exception:  # Broker down: the row is committed and the sweeper enqueues it later.
        logger.warning(
            "could not enqueue notification %s; the outbox sweeper will",
            notification_id,
            exc_info=True,
        )


def _nudge_plan(*, due_at: datetime, now: datetime) -> tuple[bool, float | None, datetime | None]:
    """Whether to enqueue delivery now, with which countdown, and the matching ``nudged_at``.

    Work due further ahead than CELERY_MAX_COUNTDOWN_SECONDS is not counted down (the
    broker would redeliver it early); the sweeper enqueues it when it is due.
    """
    delay = (due_at - now).total_seconds()
    if delay > settings.CELERY_MAX_COUNTDOWN_SECONDS:
        return False, None, None
    return True, (delay if delay > 0 else None), max(due_at, now)


def _enqueue_on_commit(notification_id: int, countdown: float | None = None) -> None:
    # Outside a transaction on_commit runs at once; inside, only if the caller commits.
    transaction.on_commit(partial(_enqueue_delivery, notification_id, countdown), robust=True)


def _record(
    *,
    user,
    kind: str,
    dedupe_key: str,
    payload: dict,
    consultation_id: int | None = None,
    expires_at: datetime | None = None,
    channel: str = NotificationChannel.EMAIL,
    now: datetime | None = None,
) -> Notification | None:
    """Write one outbox row in the current transaction; None when the key exists already.

    A muted kind is recorded as ``skipped`` (the list shows what was held back); quiet
    hours move ``next_attempt_at`` to their end.
    """
    now = now or timezone.now()
    preference = _preference_of(user)
    status = NotificationStatus.PENDING
    last_error = ""
    if preference is not None and preference.is_muted(kind):
        status, last_error = NotificationStatus.SKIPPED, "muted by the user"
    due_at = quiet_hours_end(preference=preference, tz=_user_timezone(user), now=now) or now
    enqueue, countdown, nudged_at = _nudge_plan(due_at=due_at, now=now)
    if status != NotificationStatus.PENDING:
        enqueue, countdown, nudged_at = False, None, None
    notification = Notification(
        user=user,
        kind=kind,
        channel=channel,
        payload=payload,
        dedupe_key=dedupe_key[:200],
        consultation_id=consultation_id,
        status=status,
        last_error=last_error,
        created_at=now,
        next_attempt_at=due_at,
        expires_at=expires_at,
        nudged_at=nudged_at,
    )
    try:
        # A savepoint: a duplicate key rolls back this insert only, not the caller's event.
        # Two concurrent writers of one key: the second waits on the unique index and
        # gets IntegrityError once the first commits.
        with transaction.atomic():
            notification.save(force_insert=True)
    except IntegrityError:
        if Notification.objects.filter(dedupe_key=notification.dedupe_key).exists():
            return None
        raise
    if enqueue:
        _enqueue_on_commit(notification.pk, countdown)
    return notification


def _consultation_payload(consultation) -> dict:
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


def _acted_by_id(consultation, kind: str) -> int | None:
    """Who cancelled (or, for a reschedule, cancelled the consultation it replaces)."""
    if kind == NotificationKind.CONSULTATION_RESCHEDULED:
        previous = consultation.rescheduled_from if consultation.rescheduled_from_id else None
        return previous.cancelled_by_id if previous is not None else None
    return consultation.cancelled_by_id


def _actor_role(consultation, kind: str, actor) -> str | None:
    actor_id = getattr(actor, "pk", None) or _acted_by_id(consultation, kind)
    if actor_id is None:
        return None
    if actor_id == consultation.patient_id:
        return "patient"
    if actor_id == consultation.provider_id:
        return "provider"
    return "clinic"


def _consultation_recipients(consultation, kind: str, actor) -> list:
    patient, provider = consultation.patient, consultation.provider
    if kind in (NotificationKind.CONSULTATION_CANCELLED, NotificationKind.CONSULTATION_RESCHEDULED):
        # To the other party; staff acting for the clinic leaves both parties to inform.
        actor_id = getattr(actor, "pk", None) or _acted_by_id(consultation, kind)
        return [user for user in (patient, provider) if user.pk != actor_id]
    return [patient]


def notify_consultation_event(*, consultation, kind: str, actor=None) -> list[Notification]:
    """Outbox rows for a consultation event.

    ``kind`` is one of ``booking_confirmed``, ``consultation_cancelled``,
    ``consultation_rescheduled``, ``no_show_marked``, ``consultation_started``. Booking,
    start and no-show go to the patient; a cancellation or a reschedule to the other party
    (``actor``, or the consultation's ``cancelled_by``; both parties when staff acted). For
    a reschedule pass the new consultation. Call inside the event's transaction.
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
    for user in _consultation_recipients(consultation, kind, actor):
        notification = _record(
            user=user,
            kind=kind,
            dedupe_key=f"consultation:{consultation.pk}:{kind}:user:{user.pk}",
            payload=payload,
            consultation_id=consultation.pk,
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
    return _record(
        user=entry.patient,
        kind=NotificationKind.QUEUE_CALLED,
        dedupe_key=f"queue-entry:{entry.pk}:called",
        payload=payload,
        consultation_id=entry.consultation_id,
    )


def notify_unread_messages(*, user, consultation) -> Notification | None:
    """Outbox row for an offline participant with unread messages (one per idle period).

    At most one per consultation and participant per NOTIFICATION_UNREAD_WINDOW_SECONDS:
    calling it for every message that arrives while they are away sends one email.
    """
    now = timezone.now()
    window = int(now.timestamp()) // settings.NOTIFICATION_UNREAD_WINDOW_SECONDS
    other = consultation.provider if user.pk == consultation.patient_id else consultation.patient
    payload = {
        "consultation_id": consultation.pk,
        "from_name": other.full_name,
        "scheduled_start": consultation.scheduled_start.astimezone(UTC).isoformat(),
    }
    return _record(
        user=user,
        kind=NotificationKind.UNREAD_MESSAGES,
        dedupe_key=f"consultation:{consultation.pk}:unread:user:{user.pk}:window:{window}",
        payload=payload,
        consultation_id=consultation.pk,
        now=now,
    )


# --- Reminders ----------------------------------------------------------------------------


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
    from consultations.models import Consultation, ConsultationStatus

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
                notification = _record(
                    user=consultation.patient,
                    kind=kind,
                    dedupe_key=_reminder_key(consultation.pk, kind, consultation.patient_id),
                    payload=_consultation_payload(consultation),
                    consultation_id=consultation.pk,
                    # Never after the start: a late reminder is worse than none.
                    expires_at=consultation.scheduled_start,
                    now=now,
                )
            written += notification is not None
        previous_lead = lead
    return written


def _still_relevant(notification: Notification, *, now: datetime) -> str | None:
    """Why a notification should no longer be sent, or None if it should."""
    if notification.expires_at is not None and now >= notification.expires_at:
        return "expired before it could be delivered"
    if notification.kind not in _CHECKED_AGAINST_CONSULTATION or not notification.consultation_id:
        return None
    from consultations.models import Consultation, ConsultationStatus

    current = (
        Consultation.objects.filter(pk=notification.consultation_id)
        .values("status", "scheduled_start")
        .first()
    )
    if current is None or current["status"] == ConsultationStatus.CANCELLED:
        # E.g. a confirmation held by quiet hours, and the patient cancelled meanwhile.
        return "the consultation was cancelled"
    if notification.kind in _REMINDER_KINDS:
        if current["status"] != ConsultationStatus.SCHEDULED:
            return "the consultation is no longer scheduled"
        scheduled = current["scheduled_start"].astimezone(UTC).isoformat()
        if scheduled != notification.payload.get("scheduled_start"):
            return "the consultation was moved"
    return None


# --- Delivery -----------------------------------------------------------------------------


class DeliveryOutcome(StrEnum):
    SENT = "sent"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED = "failed"
    SKIPPED = "skipped"
    DEFERRED = "deferred"  # quiet hours
    NOT_DUE = "not_due"
    NOT_PENDING = "not_pending"  # sent, failed, or in flight elsewhere
    CLAIM_LOST = "claim_lost"  # another worker claimed it between our read and our update
    MISSING = "missing"


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: exponential, jittered.

    "Equal jitter": a random point in the upper half of the exponential step, so retries of
    many rows that failed together (an SMTP outage) spread out instead of returning at once.
    """
    ceiling = min(
        settings.NOTIFICATION_RETRY_MAX_SECONDS,
        settings.NOTIFICATION_RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1),
    )
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - spreading load, not security


def _finish(notification_id: int, *, token: uuid.UUID | None, **changes) -> bool:
    """Conditional final write of an attempt: only while our claim still holds."""
    queryset = Notification.objects.filter(pk=notification_id)
    if token is None:
        queryset = queryset.filter(status=NotificationStatus.PENDING)
    else:
        queryset = queryset.filter(status=NotificationStatus.SENDING, claim_token=token)
    return queryset.update(**changes) == 1


def _mark_sent(notification: Notification, token: uuid.UUID) -> bool:
    """Record the acceptance at once; a database blip is retried here, briefly.

    Giving up leaves the row ``sending``: after its lease the sweeper retries it, which
    is the at-least-once window documented above, so it is worth a few tries.
    """
    for pause in (0.1, 0.5, 2.0, None):
        try:
            recorded = _finish(
                notification.pk,
                token=token,
                status=NotificationStatus.SENT,
                sent_at=timezone.now(),
                last_error="",
                lease_expires_at=None,
            )
        except DatabaseError:
            if pause is None:
                raise
            time.sleep(pause)
            continue
        if not recorded:
            # Only possible if our lease expired while we were sending (a frozen process);
            # the lease is longer than the task's hard limit, so this is an anomaly.
            logger.error(
                "notification %s was sent but its claim had been taken over", notification.pk
            )
        return recorded
    return False  # unreachable


def _fail_or_retry(
    notification: Notification, token: uuid.UUID, *, error: str, permanent: bool
) -> DeliveryOutcome:
    now = timezone.now()
    error = error[:2000]
    if permanent or notification.attempts >= settings.NOTIFICATION_MAX_ATTEMPTS:
        if _finish(
            notification.pk,
            token=token,
            status=NotificationStatus.FAILED,
            last_error=error,
            lease_expires_at=None,
            claim_token=None,
        ):
            metrics.NOTIFICATIONS_FAILED.labels(notification.kind, notification.channel).inc()
            logger.warning(
                "notification %s failed after %s attempt(s): %s",
                notification.pk,
                notification.attempts,
                error,
            )
        return DeliveryOutcome.FAILED
    due_at = now + timedelta(seconds=retry_delay(notification.attempts))
    enqueue, countdown, nudged_at = _nudge_plan(due_at=due_at, now=now)
    handed_back = _finish(
        notification.pk,
        token=token,
        status=NotificationStatus.PENDING,
        next_attempt_at=due_at,
        nudged_at=nudged_at,
        last_error=error,
        lease_expires_at=None,
        claim_token=None,
    )
    if handed_back and enqueue:
        _enqueue_on_commit(notification.pk, countdown)
    metrics.NOTIFICATIONS_RETRIED.labels(notification.kind, notification.channel).inc()
    logger.info(
        "notification %s attempt %s failed (%s); next attempt at %s",
        notification.pk,
        notification.attempts,
        error,
        due_at.isoformat(),
    )
    return DeliveryOutcome.RETRY_SCHEDULED


def notification_deliver(*, notification_id: int) -> DeliveryOutcome:
    """Deliver one outbox row if it is pending and due; safe to call any number of times.

    Not one transaction, on purpose: the claim must be committed before the message leaves
    (so that a second worker sees it) and ``sent_at`` right after (so that a crash cannot
    forget it). Each step is a single-row conditional UPDATE in autocommit mode.
    """
    now = timezone.now()
    notification = (
        Notification.objects.select_related("user", "user__notification_preference")
        .filter(pk=notification_id)
        .first()
    )
    if notification is None:
        return DeliveryOutcome.MISSING
    if notification.status != NotificationStatus.PENDING:
        return DeliveryOutcome.NOT_PENDING
    if notification.next_attempt_at > now + DUE_TOLERANCE:
        return DeliveryOutcome.NOT_DUE

    user = notification.user
    preference = _preference_of(user)
    reason = "muted by the user" if preference and preference.is_muted(notification.kind) else None
    reason = reason or _still_relevant(notification, now=now)
    if reason is not None:
        _finish(notification.pk, token=None, status=NotificationStatus.SKIPPED, last_error=reason)
        return DeliveryOutcome.SKIPPED
    quiet_until = quiet_hours_end(preference=preference, tz=_user_timezone(user), now=now)
    if quiet_until is not None:
        enqueue, countdown, nudged_at = _nudge_plan(due_at=quiet_until, now=now)
        deferred = _finish(
            notification.pk, token=None, next_attempt_at=quiet_until, nudged_at=nudged_at
        )
        if deferred and enqueue:
            _enqueue_on_commit(notification.pk, countdown)
        return DeliveryOutcome.DEFERRED

    # The claim: exactly one row changes, or this attempt is not ours to make.
    token = uuid.uuid4()
    claimed = Notification.objects.filter(
        pk=notification.pk,
        status=NotificationStatus.PENDING,
        next_attempt_at__lte=now + DUE_TOLERANCE,
    ).update(
        status=NotificationStatus.SENDING,
        attempts=F("attempts") + 1,
        claim_token=token,
        lease_expires_at=now + timedelta(seconds=settings.NOTIFICATION_LEASE_SECONDS),
    )
    if claimed != 1:
        return DeliveryOutcome.CLAIM_LOST
    notification.attempts += 1

    accepted = False
    try:
        channel = channel_for(notification.channel)
        message = channel.render(notification=notification)
        with channel.open() as sender:
            sender.send(message)
            accepted = True
            recorded = _mark_sent(notification, token)
    except Exception as exc:
        if accepted:
            # Handed over already: never retry from here. Reaching this means recording
            # it failed; the row stays `sending` and the lease decides (see module doc).
            logger.exception("notification %s accepted but not recorded", notification.pk)
            raise
        return _fail_or_retry(
            notification,
            token,
            error=f"{type(exc).__name__}: {exc}",
            permanent=isinstance(exc, PermanentDeliveryError),
        )
    if recorded:
        metrics.NOTIFICATIONS_SENT.labels(notification.kind, notification.channel).inc()
    return DeliveryOutcome.SENT


# --- Sweeper and resend ------------------------------------------------------------------


@dataclass
class SweepResult:
    recovered: int = 0  # `sending` past the lease, handed back to `pending`
    failed: int = 0  # `sending` past the lease with no attempts left
    enqueued: int = 0  # due `pending` rows whose delivery task was (re-)enqueued


def outbox_sweep(*, now: datetime | None = None, batch: int | None = None) -> SweepResult:
    """Recover rows whose worker died mid-send, and enqueue due rows nobody is delivering.

    Safe when two sweeps overlap: each recovery is a conditional update on the claim that
    was seen, and an extra enqueue is harmless (the delivery claims the row or stops). On
    PostgreSQL overlapping sweeps also split the due rows between them (SKIP LOCKED).
    """
    now = now or timezone.now()
    batch = batch or settings.NOTIFICATION_SWEEP_BATCH
    result = SweepResult()

    stuck = list(
        Notification.objects.filter(status=NotificationStatus.SENDING, lease_expires_at__lt=now)
        .order_by("lease_expires_at")
        .values("pk", "kind", "channel", "attempts", "claim_token")[:batch]
    )
    for row in stuck:
        lost = Notification.objects.filter(
            pk=row["pk"], status=NotificationStatus.SENDING, claim_token=row["claim_token"]
        )
        error = "lease expired: the worker died or hung during the attempt"
        if row["attempts"] >= settings.NOTIFICATION_MAX_ATTEMPTS:
            if lost.update(
                status=NotificationStatus.FAILED,
                last_error=error,
                claim_token=None,
                lease_expires_at=None,
            ):
                result.failed += 1
                metrics.NOTIFICATIONS_FAILED.labels(row["kind"], row["channel"]).inc()
        elif lost.update(
            status=NotificationStatus.PENDING,
            next_attempt_at=now,
            nudged_at=None,
            last_error=error,
            claim_token=None,
            lease_expires_at=None,
        ):
            result.recovered += 1
            logger.warning("notification %s: %s; retrying", row["pk"], error)

    renudge_before = now - timedelta(seconds=settings.NOTIFICATION_RENUDGE_SECONDS)
    with transaction.atomic():
        due_ids = list(
            Notification.objects.select_for_update(skip_locked=True)
            .filter(status=NotificationStatus.PENDING, next_attempt_at__lte=now)
            .exclude(nudged_at__gt=renudge_before)
            .order_by("next_attempt_at", "id")
            .values_list("pk", flat=True)[:batch]
        )
        if due_ids:
            Notification.objects.filter(pk__in=due_ids).update(nudged_at=now)
            for notification_id in due_ids:
                transaction.on_commit(partial(_enqueue_delivery, notification_id), robust=True)
    result.enqueued = len(due_ids)
    return result


def notifications_resend(*, notification_ids: list[int]) -> int:
    """Put failed notifications back in the outbox with a fresh set of attempts."""
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            Notification.objects.select_for_update()
            .filter(pk__in=notification_ids, status=NotificationStatus.FAILED)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        Notification.objects.filter(pk__in=ids, status=NotificationStatus.FAILED).update(
            status=NotificationStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            nudged_at=now,
            claim_token=None,
            lease_expires_at=None,
        )
        for notification_id in ids:
            transaction.on_commit(partial(_enqueue_delivery, notification_id), robust=True)
    return len(ids)
