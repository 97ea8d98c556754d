"""What chat tells people through the workers outbox: unread messages while they are away."""

from __future__ import annotations

from datetime import UTC

from django.conf import settings
from django.utils import timezone

from workers.models import Notification, NotificationKind
from workers.services import notification_record


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
    return notification_record(
        user=user,
        kind=NotificationKind.UNREAD_MESSAGES,
        dedupe_key=f"consultation:{consultation.pk}:unread:user:{user.pk}:window:{window}",
        payload=payload,
        consultation_id=consultation.pk,
        now=now,
    )
