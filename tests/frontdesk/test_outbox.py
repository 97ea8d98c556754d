"""The clinic's outbox for its staff: scoped to the clinic, status/attempts/last error, resend."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import Role
from medease.models import AuditEvent
from workers.models import Notification, NotificationStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def notes(make_user, provider, other_provider, make_slot, book):
    mine = book(make_user(Role.PATIENT, full_name="Our Patient"), make_slot(provider))
    theirs = book(make_user(Role.PATIENT, full_name="Their Patient"), make_slot(other_provider))
    ours = Notification.objects.get(consultation_id=mine.pk)
    Notification.objects.filter(pk=ours.pk).update(
        status=NotificationStatus.FAILED, attempts=5, last_error="550 mailbox unavailable"
    )
    return ours, Notification.objects.get(consultation_id=theirs.pk)


def test_the_outbox_shows_the_clinics_notifications_only(desk, notes):
    ours, theirs = notes
    body = desk.get(reverse("frontdesk:outbox")).content.decode()
    assert f'id="notification-{ours.pk}"' in body
    assert "550 mailbox unavailable" in body
    assert f'id="notification-{theirs.pk}"' not in body
    event = AuditEvent.objects.get(object_type="notification")
    assert (event.object_id, event.patient_id) == (str(ours.pk), ours.user_id)
    failed = desk.get(reverse("frontdesk:outbox"), {"status": "sent"}).content.decode()
    assert f'id="notification-{ours.pk}"' not in failed


def test_resend_puts_the_clinics_failed_rows_back(desk, notes, django_capture_on_commit_callbacks):
    ours, theirs = notes
    Notification.objects.filter(pk=theirs.pk).update(status=NotificationStatus.FAILED)
    with django_capture_on_commit_callbacks(execute=False):
        response = desk.post(reverse("frontdesk:outbox"), {"ids": [ours.pk, theirs.pk]})
    assert response.status_code == 302
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert (ours.status, ours.attempts) == (NotificationStatus.PENDING, 0)
    assert theirs.status == NotificationStatus.FAILED  # another clinic's row: untouched
