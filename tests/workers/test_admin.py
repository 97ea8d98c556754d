"""The outbox in the staff console: failures visible, resend through the service."""

from __future__ import annotations

import pytest

from accounts.models import User
from workers.models import Notification, NotificationKind, NotificationStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_browser(client):
    admin = User.objects.create_superuser("root@example.test", "correct-horse-battery-staple")
    client.force_login(admin)
    return client


def make(user, status, index):
    return Notification.objects.create(
        user=user,
        kind=NotificationKind.BOOKING_CONFIRMED,
        dedupe_key=f"admin-test:{index}",
        status=status,
        attempts=6 if status == NotificationStatus.FAILED else 1,
        last_error="SMTPRecipientsRefused: 451 try later" if status == "failed" else "",
    )


def test_failed_notifications_are_listed_and_filterable(admin_browser, patient):
    failed = make(patient, NotificationStatus.FAILED, 1)
    make(patient, NotificationStatus.SENT, 2)
    page = admin_browser.get("/admin/workers/notification/?status__exact=failed")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"/admin/workers/notification/{failed.pk}/change/" in html
    assert "451 try later" in html
    detail = admin_browser.get(f"/admin/workers/notification/{failed.pk}/change/")
    assert detail.status_code == 200


def test_resend_action_queues_failed_rows_only(
    admin_browser, patient, django_capture_on_commit_callbacks, mailoutbox
):
    failed = make(patient, NotificationStatus.FAILED, 1)
    sent = make(patient, NotificationStatus.SENT, 2)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_browser.post(
            "/admin/workers/notification/",
            {"action": "resend", "_selected_action": [failed.pk, sent.pk]},
            follow=True,
        )
    assert response.status_code == 200
    assert "1 notification(s) queued again." in response.content.decode()
    failed.refresh_from_db()
    sent.refresh_from_db()
    assert failed.status == NotificationStatus.SENT  # delivered (tasks run eagerly here)
    assert failed.attempts == 1
    assert sent.attempts == 1
    assert len(mailoutbox) == 1


def test_staff_cannot_resend_or_see_the_outbox(client, staff, patient):
    make(patient, NotificationStatus.FAILED, 1)
    client.force_login(staff)
    assert client.get("/admin/workers/notification/").status_code == 403
