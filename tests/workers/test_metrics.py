"""/metrics shows the outbox from the database and the delivery counters."""

from __future__ import annotations

import pytest

from workers.models import Notification, NotificationKind, NotificationStatus

pytestmark = pytest.mark.django_db


def sample(body: str, prefix: str) -> float:
    line = next(line for line in body.splitlines() if line.startswith(prefix))
    return float(line.rsplit(" ", 1)[1])


def test_metrics_show_outbox_state_and_failures(client, patient):
    for index, status in enumerate(["failed", "failed", "pending", "sent"]):
        Notification.objects.create(
            user=patient,
            kind=NotificationKind.REMINDER_1H,
            dedupe_key=f"metrics:{index}",
            status=status,
        )
    body = client.get("/metrics").content.decode()
    assert sample(body, 'medease_notifications{status="failed"}') == 2
    assert sample(body, 'medease_notifications{status="pending"}') == 1
    assert sample(body, 'medease_notifications{status="sending"}') == 0
    assert "medease_notifications_oldest_due_seconds" in body
    assert "# TYPE medease_notifications_failed_total counter" in body
    assert "# TYPE medease_notifications_sent_total counter" in body
    assert NotificationStatus.SKIPPED in body
