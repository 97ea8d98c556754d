"""The notification outbox and each user's notification preferences."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.timezone import now


class NotificationKind(models.TextChoices):
    BOOKING_CONFIRMED = "booking_confirmed", "Booking confirmed"
    CONSULTATION_CANCELLED = "consultation_cancelled", "Consultation cancelled"
    CONSULTATION_RESCHEDULED = "consultation_rescheduled", "Consultation rescheduled"
    CONSULTATION_STARTED = "consultation_started", "Consultation started"
    NO_SHOW_MARKED = "no_show_marked", "Marked as no-show"
    PROVIDER_ABSENT = "provider_absent", "Provider did not join the visit"
    REMINDER_24H = "reminder_24h", "Reminder, 24 hours before"
    REMINDER_1H = "reminder_1h", "Reminder, 1 hour before"
    QUEUE_CALLED = "queue_called", "You are next in the queue"
    UNREAD_MESSAGES = "unread_messages", "Unread messages"


class NotificationChannel(models.TextChoices):
    # SMS, push and webhooks implement workers.channels.Channel and are added here.
    EMAIL = "email", "Email"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    # Not delivered on purpose: the user muted the kind, or it would arrive too late
    # (a reminder for a consultation that has started, been cancelled or moved).
    SKIPPED = "skipped", "Skipped"


class NotificationQuerySet(models.QuerySet):
    def visible_to(self, user) -> NotificationQuerySet:
        """The rows ``user`` may see: their own. Staff too (the admin is the console's view)."""
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(user=user)


class Notification(models.Model):
    """One message to one user on one channel: an outbox row, delivered at most once per claim.

    Written in the transaction of the event that causes it; ``dedupe_key`` makes the event
    idempotent (a second beat, a retried request) and the ``status`` transitions are
    conditional updates in workers.services, the only writer.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    kind = models.CharField(max_length=32, choices=NotificationKind.choices)
    channel = models.CharField(
        max_length=16, choices=NotificationChannel.choices, default=NotificationChannel.EMAIL
    )
    # What the templates need, fixed at the time of the event (times in UTC, ISO 8601).
    payload = models.JSONField(default=dict, blank=True)
    dedupe_key = models.CharField(max_length=200, unique=True)
    # The consultation the notification is about, if any: reminders find theirs by it. A
    # plain column, not a foreign key, so that the outbox outlives what it reports on.
    consultation_id = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=8, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    # Number of claims so far, i.e. delivery attempts started.
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=now, editable=False)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Not before: retries back off and quiet hours defer by moving this forward.
    next_attempt_at = models.DateTimeField(default=now)
    # Not after: a reminder is pointless once its consultation has started.
    expires_at = models.DateTimeField(null=True, blank=True)
    # The claim of the attempt in flight: a worker that still holds ``sending`` past
    # ``lease_expires_at`` is presumed dead and the sweeper hands the row back.
    claim_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # When a delivery task was last enqueued (or is due to fire) for this row; the sweeper
    # enqueues again only rows whose task has not turned up for a while.
    nudged_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["user", "-id"], name="workers_notif_user_idx"),
            # The sweeper's two scans, kept small: only rows that still need work.
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status=NotificationStatus.PENDING),
                name="workers_notif_pending_idx",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status=NotificationStatus.SENDING),
                name="workers_notif_sending_idx",
            ),
            models.Index(fields=["consultation_id", "kind"], name="workers_notif_consult_idx"),
            models.Index(fields=["status"], name="workers_notif_status_idx"),
        ]

    def __str__(self) -> str:
        return f"Notification {self.pk} {self.kind} to user {self.user_id} ({self.status})"


class NotificationPreference(models.Model):
    """A user's choices: which kinds they receive, and quiet hours in their own timezone."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="notification_preference",
    )
    # Kinds the user turned off (every kind is on until turned off).
    muted_kinds = models.JSONField(default=list, blank=True)
    # Local wall-clock times in the user's timezone; the window may wrap midnight
    # (22:00-07:00). Deliveries due inside it wait for its end; nothing is dropped.
    quiet_hours_start = models.TimeField(null=True, blank=True)
    quiet_hours_end = models.TimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(quiet_hours_start__isnull=True, quiet_hours_end__isnull=True)
                | Q(quiet_hours_start__isnull=False, quiet_hours_end__isnull=False),
                name="workers_pref_quiet_hours_both_or_neither",
                violation_error_message="Give both ends of the quiet hours, or neither.",
            ),
        ]

    def __str__(self) -> str:
        return f"Notification preferences of user {self.user_id}"

    def is_muted(self, kind: str) -> bool:
        return kind in (self.muted_kinds or [])
