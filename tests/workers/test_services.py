"""The outbox: recording in the caller's transaction, dedupe, delivery, retries, sweeping.

Deliveries go over real SMTP to an aiosmtpd sink; tasks run eagerly in this process.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, time, timedelta

import pytest
import time_machine
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY

from accounts.models import Role
from consultations import notifications
from consultations.models import ConsultationStatus
from messaging import notifications as chat_notifications
from tests.workers.conftest import celery_broker
from tests.workers.smtp_sink import free_port
from workers import relevance, services
from workers.models import Notification, NotificationKind, NotificationStatus
from workers.services import DeliveryOutcome

pytestmark = pytest.mark.django_db


def failed_total(kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "medease_notifications_failed_total", {"kind": kind, "channel": "email"}
    )
    return value or 0.0


def book_event(consultation, kind=NotificationKind.BOOKING_CONFIRMED, **kwargs):
    """Record an event the way the clinic core does: inside its transaction."""
    with transaction.atomic():
        return notifications.notify_consultation_event(
            consultation=consultation, kind=kind, **kwargs
        )


# --- Recording ----------------------------------------------------------------------------


def test_booking_confirmation_is_delivered_once_on_commit(
    sink, patient, provider, make_consultation, django_capture_on_commit_callbacks
):
    consultation = make_consultation(patient, provider)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        [notification] = book_event(consultation)
        assert sink.count() == 0, "nothing leaves before the transaction commits"
    assert len(callbacks) == 1
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT
    assert notification.attempts == 1
    assert notification.sent_at is not None
    assert notification.user == patient
    [message] = sink.messages
    assert message["To"] == patient.email
    assert message["Subject"].startswith("Booking confirmed")


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_event_writes_and_sends_nothing(sink, patient, provider, make_consultation):
    consultation = make_consultation(patient, provider)
    with pytest.raises(RuntimeError), transaction.atomic():
        notifications.notify_consultation_event(
            consultation=consultation, kind=NotificationKind.BOOKING_CONFIRMED
        )
        raise RuntimeError("the booking failed after the outbox row was written")
    assert Notification.objects.count() == 0
    assert sink.count() == 0

    # The same event committed is delivered exactly once, after the commit.
    book_event(consultation)
    assert Notification.objects.get().status == NotificationStatus.SENT
    assert sink.count() == 1


def test_an_event_recorded_twice_writes_one_row(patient, provider, make_consultation):
    consultation = make_consultation(patient, provider)
    first = book_event(consultation)
    second = book_event(consultation)
    assert len(first) == 1
    assert second == []
    assert Notification.objects.filter(kind=NotificationKind.BOOKING_CONFIRMED).count() == 1


def test_a_duplicate_does_not_roll_back_the_callers_transaction(
    patient, provider, make_consultation
):
    consultation = make_consultation(patient, provider)
    book_event(consultation)
    with transaction.atomic():
        assert (
            notifications.notify_consultation_event(
                consultation=consultation, kind=NotificationKind.BOOKING_CONFIRMED
            )
            == []
        )
        # The caller's transaction is still usable after the swallowed duplicate.
        consultation.reason = "Updated"
        consultation.save(update_fields=["reason"])
    consultation.refresh_from_db()
    assert consultation.reason == "Updated"


def test_cancellation_goes_to_the_other_party(
    patient, provider, staff, make_consultation, django_capture_on_commit_callbacks
):
    by_patient = make_consultation(patient, provider)
    by_patient.cancelled_by = patient
    [notification] = book_event(by_patient, NotificationKind.CONSULTATION_CANCELLED)
    assert notification.user == provider
    assert notification.payload["actor_role"] == "patient"

    by_provider = make_consultation(patient, provider, starts_in=timedelta(days=4))
    [notification] = book_event(
        by_provider, NotificationKind.CONSULTATION_CANCELLED, actor=provider
    )
    assert notification.user == patient

    by_clinic = make_consultation(patient, provider, starts_in=timedelta(days=5))
    by_clinic.cancelled_by = staff
    notifications = book_event(by_clinic, NotificationKind.CONSULTATION_CANCELLED)
    assert {n.user for n in notifications} == {patient, provider}


def test_reschedule_tells_the_other_party_with_the_old_and_new_time(
    patient, provider, make_consultation
):
    old = make_consultation(patient, provider)
    old.status, old.cancelled_by = ConsultationStatus.CANCELLED, patient
    old.save()
    new = make_consultation(patient, provider, starts_in=timedelta(days=6))
    new.rescheduled_from = old
    new.save()
    [notification] = book_event(new, NotificationKind.CONSULTATION_RESCHEDULED)
    assert notification.user == provider
    assert notification.payload["previous_start"] == old.scheduled_start.isoformat()
    assert notification.payload["scheduled_start"] == new.scheduled_start.isoformat()


def test_unknown_kind_is_a_programming_error(patient, provider, make_consultation):
    with pytest.raises(ValueError):
        notifications.notify_consultation_event(
            consultation=make_consultation(patient, provider), kind="birthday"
        )


def test_the_payload_keeps_phi_out(patient, provider, make_consultation):
    [notification] = book_event(make_consultation(patient, provider))
    assert "Persistent cough" not in str(notification.payload)


def test_queue_called_and_unread_messages(
    sink, patient, provider, make_consultation, django_capture_on_commit_callbacks
):
    from consultations.models import QueueEntry, QueueStatus

    consultation = make_consultation(patient, provider, starts_in=timedelta(0))
    entry = QueueEntry.objects.create(
        provider=provider,
        organization=provider.organization,
        patient=patient,
        status=QueueStatus.CALLED,
        called_at=timezone.now(),
        consultation=consultation,
    )
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        assert notifications.notify_queue_called(entry=entry) is not None
        assert notifications.notify_queue_called(entry=entry) is None  # one per entry
        first = chat_notifications.notify_unread_messages(user=patient, consultation=consultation)
        # More messages while the patient is still away: no second email in the window.
        again = chat_notifications.notify_unread_messages(user=patient, consultation=consultation)
    assert first is not None and again is None
    assert sorted(sink.subjects()) == [
        f"New messages from {provider.full_name}",
        f"You are next: {provider.full_name} is ready for you",
    ]


# --- Rendering ----------------------------------------------------------------------------


def test_email_has_text_and_html_with_times_in_the_recipients_timezone(
    sink, paris_patient, ny_provider, make_consultation, django_capture_on_commit_callbacks
):
    consultation = make_consultation(paris_patient, ny_provider)
    start = datetime(2031, 1, 15, 14, 0, tzinfo=UTC)  # 15:00 in Paris, 09:00 in New York
    consultation.scheduled_start, consultation.scheduled_end = start, start + timedelta(minutes=30)
    consultation.cancelled_by = paris_patient
    with django_capture_on_commit_callbacks(execute=True):
        book_event(consultation)  # to the patient, in Paris
        book_event(consultation, NotificationKind.CONSULTATION_CANCELLED)  # to the provider
    to_patient, to_provider = sink.messages
    assert to_patient.is_multipart()
    text, html = (part.get_payload(decode=True).decode() for part in to_patient.get_payload())
    assert "Wednesday 15 January 2031, 15:00-15:30 (Europe/Paris)" in text
    assert "15:00&ndash;15:30 (Europe/Paris)" in html
    assert "<strong>Dr. Ada Okafor</strong>" in html
    assert "Amélie Durand" in text
    provider_text = to_provider.get_payload()[0].get_payload(decode=True).decode()
    assert "09:00-09:30 (America/New_York)" in provider_text
    assert "Amélie Durand cancelled their consultation with you, planned for" in provider_text
    assert to_provider["Subject"] == "Cancelled: your consultation on Wed 15 Jan, 09:00"


def test_every_kind_renders(paris_patient, ny_provider, make_consultation):
    from workers.channels import EmailChannel

    consultation = make_consultation(paris_patient, ny_provider)
    payload = notifications._consultation_payload(consultation)
    payload.update(
        {"from_name": "Dr. Ada Okafor", "called_at": payload["scheduled_start"], "actor_role": None}
    )
    for kind in NotificationKind.values:
        notification = Notification(
            pk=1, user=paris_patient, kind=kind, payload=payload, dedupe_key=f"k:{kind}"
        )
        message = EmailChannel().render(notification=notification)
        assert message.subject and "\n" not in message.subject, kind
        assert "Europe/Paris" in message.text, kind
        assert message.html.lstrip().startswith("<!DOCTYPE html>"), kind
        assert message.headers["Message-ID"].startswith("<notification.1."), kind


# --- Delivery: claims and exactly once ----------------------------------------------------


def test_delivering_twice_sends_once(sink, patient, provider, make_consultation):
    [notification] = book_event(make_consultation(patient, provider))  # on_commit not run
    assert services.notification_deliver(notification_id=notification.pk) == DeliveryOutcome.SENT
    again = services.notification_deliver(notification_id=notification.pk)
    assert again == DeliveryOutcome.NOT_PENDING
    assert sink.count() == 1


def test_a_row_claimed_by_another_worker_is_left_alone(sink, patient, provider, make_consultation):
    [notification] = book_event(make_consultation(patient, provider))
    Notification.objects.filter(pk=notification.pk).update(
        status=NotificationStatus.SENDING,
        claim_token=uuid.uuid4(),
        lease_expires_at=timezone.now() + timedelta(minutes=5),
        attempts=1,
    )
    outcome = services.notification_deliver(notification_id=notification.pk)
    assert outcome == DeliveryOutcome.NOT_PENDING
    assert sink.count() == 0


def test_missing_row_is_a_no_op():
    assert services.notification_deliver(notification_id=987654) == DeliveryOutcome.MISSING


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliveries_of_one_row_send_one_email(
    sink, patient, provider, make_consultation
):
    with transaction.atomic():
        [notification] = notifications.notify_consultation_event(
            consultation=make_consultation(patient, provider),
            kind=NotificationKind.BOOKING_CONFIRMED,
        )
        # Keep the on-commit delivery out of the way: this test delivers by hand.
        Notification.objects.filter(pk=notification.pk).update(
            next_attempt_at=timezone.now() + timedelta(hours=1)
        )
    Notification.objects.filter(pk=notification.pk).update(next_attempt_at=timezone.now())
    barrier = threading.Barrier(4)
    outcomes = []

    def deliver():
        try:
            barrier.wait()
            outcomes.append(services.notification_deliver(notification_id=notification.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(DeliveryOutcome.SENT) == 1
    assert sink.count() == 1
    assert Notification.objects.get().attempts == 1


# --- Retries and failures -----------------------------------------------------------------


def test_refused_recipient_is_retried_with_backoff_then_failed(
    settings, sink, patient, provider, make_consultation, django_capture_on_commit_callbacks
):
    settings.NOTIFICATION_MAX_ATTEMPTS = 4
    settings.NOTIFICATION_RETRY_BASE_SECONDS = 60
    sink.rcpt_reply = "451 4.3.0 Mailbox temporarily unavailable"
    before = failed_total(NotificationKind.BOOKING_CONFIRMED)
    with django_capture_on_commit_callbacks(execute=True):
        [notification] = book_event(make_consultation(patient, provider))

    attempted_at = timezone.now()
    for attempt in range(1, 4):
        notification.refresh_from_db()
        assert notification.status == NotificationStatus.PENDING
        assert notification.attempts == attempt
        assert "451" in notification.last_error
        assert notification.claim_token is None and notification.lease_expires_at is None
        delay = (notification.next_attempt_at - attempted_at).total_seconds()
        step = 60 * 2 ** (attempt - 1)  # 60 s, 120 s, 240 s, each jittered into [step/2, step]
        assert step / 2 - 1 <= delay <= step + 1, (attempt, delay)
        # Not due yet: a duplicate nudge does nothing.
        with time_machine.travel(attempted_at, tick=False):
            outcome = services.notification_deliver(notification_id=notification.pk)
        assert outcome == DeliveryOutcome.NOT_DUE
        attempted_at = notification.next_attempt_at + timedelta(seconds=1)
        with time_machine.travel(attempted_at, tick=False):
            outcome = services.notification_deliver(notification_id=notification.pk)
        assert outcome in (DeliveryOutcome.RETRY_SCHEDULED, DeliveryOutcome.FAILED)

    notification.refresh_from_db()
    assert notification.status == NotificationStatus.FAILED
    assert notification.attempts == 4
    assert sink.rcpt_attempts == 4
    assert sink.count() == 0
    assert failed_total(NotificationKind.BOOKING_CONFIRMED) == before + 1


def test_a_permanent_refusal_fails_at_once(
    sink, patient, provider, make_consultation, django_capture_on_commit_callbacks
):
    sink.rcpt_reply = "550 5.1.1 No such user"
    with django_capture_on_commit_callbacks(execute=True):
        [notification] = book_event(make_consultation(patient, provider))
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.FAILED
    assert notification.attempts == 1
    assert "550" in notification.last_error


def test_an_unreachable_mail_server_is_a_transient_failure(
    settings, patient, provider, make_consultation
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nobody listens
    [notification] = book_event(make_consultation(patient, provider))
    outcome = services.notification_deliver(notification_id=notification.pk)
    assert outcome == DeliveryOutcome.RETRY_SCHEDULED
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.PENDING
    assert "cannot connect" in notification.last_error


def test_backoff_is_exponential_jittered_and_capped(settings):
    settings.NOTIFICATION_RETRY_BASE_SECONDS = 30
    settings.NOTIFICATION_RETRY_MAX_SECONDS = 600
    for attempts, ceiling in [(1, 30), (2, 60), (3, 120), (5, 480), (6, 600), (12, 600)]:
        samples = [services.retry_delay(attempts) for _ in range(200)]
        assert all(ceiling / 2 <= sample <= ceiling for sample in samples)
        assert len(set(samples)) > 1, "jittered"


def test_resend_puts_a_failed_notification_back(
    sink, patient, provider, make_consultation, django_capture_on_commit_callbacks
):
    sink.rcpt_reply = "550 5.1.1 No such user"
    with django_capture_on_commit_callbacks(execute=True):
        [notification] = book_event(make_consultation(patient, provider))
    sink.rcpt_reply = None  # the address was fixed
    with django_capture_on_commit_callbacks(execute=True):
        assert services.notifications_resend(notification_ids=[notification.pk]) == 1
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT
    assert notification.attempts == 1
    assert sink.count() == 1
    # Sent rows are not resent.
    assert services.notifications_resend(notification_ids=[notification.pk]) == 0


# --- The sweeper ----------------------------------------------------------------------------


def _stuck(notification, *, lease_left: timedelta, attempts: int = 1):
    Notification.objects.filter(pk=notification.pk).update(
        status=NotificationStatus.SENDING,
        claim_token=uuid.uuid4(),
        lease_expires_at=timezone.now() + lease_left,
        attempts=attempts,
    )


def test_sweeper_recovers_a_row_whose_worker_died_mid_send(
    sink, patient, provider, make_consultation, django_capture_on_commit_callbacks
):
    [notification] = book_event(make_consultation(patient, provider))
    _stuck(notification, lease_left=timedelta(minutes=2))
    with django_capture_on_commit_callbacks(execute=True):
        assert services.outbox_sweep().recovered == 0  # the lease still holds: hands off
    assert sink.count() == 0

    _stuck(notification, lease_left=-timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        result = services.outbox_sweep()
    assert (result.recovered, result.enqueued) == (1, 1)
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT
    assert notification.attempts == 2
    assert sink.count() == 1


def test_sweeper_fails_a_stuck_row_with_no_attempts_left(
    settings, sink, patient, provider, make_consultation
):
    settings.NOTIFICATION_MAX_ATTEMPTS = 3
    [notification] = book_event(make_consultation(patient, provider))
    _stuck(notification, lease_left=-timedelta(seconds=1), attempts=3)
    assert services.outbox_sweep().failed == 1
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.FAILED
    assert "lease expired" in notification.last_error


@pytest.mark.django_db(transaction=True)
def test_broker_down_at_commit_time_the_sweeper_delivers_later(
    monkeypatch, settings, sink, patient, provider, make_consultation
):
    settings.NOTIFICATION_RENUDGE_SECONDS = 120
    with celery_broker(monkeypatch, f"redis://127.0.0.1:{free_port()}/0"):
        # The booking commits although its delivery task cannot be published.
        [notification] = book_event(make_consultation(patient, provider))
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.PENDING
    assert sink.count() == 0

    # A sweep soon after leaves it alone: its task may still be on its way.
    assert services.outbox_sweep().enqueued == 0
    with time_machine.travel(timezone.now() + timedelta(seconds=121)):
        assert services.outbox_sweep().enqueued == 1
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT
    assert sink.count() == 1


def test_overlapping_sweeps_enqueue_a_row_once_per_renudge_period(
    settings, patient, provider, make_consultation
):
    book_event(make_consultation(patient, provider))  # its on_commit delivery never runs
    later = timezone.now() + timedelta(seconds=settings.NOTIFICATION_RENUDGE_SECONDS + 1)
    with time_machine.travel(later):
        first = services.outbox_sweep()
        second = services.outbox_sweep()
    assert (first.enqueued, second.enqueued) == (1, 0)


# --- Preferences: muted kinds and quiet hours ----------------------------------------------


def test_a_muted_kind_is_recorded_as_skipped_and_not_sent(
    sink, patient, provider, make_consultation, django_capture_on_commit_callbacks
):
    services.notification_preferences_update(
        user=patient, muted_kinds=[NotificationKind.BOOKING_CONFIRMED]
    )
    with django_capture_on_commit_callbacks(execute=True):
        [notification] = book_event(make_consultation(patient, provider))
    assert notification.status == NotificationStatus.SKIPPED
    assert sink.count() == 0


def test_muting_after_the_event_skips_at_delivery(sink, patient, provider, make_consultation):
    [notification] = book_event(make_consultation(patient, provider))
    services.notification_preferences_update(
        user=patient, muted_kinds=[NotificationKind.BOOKING_CONFIRMED]
    )
    outcome = services.notification_deliver(notification_id=notification.pk)
    assert outcome == DeliveryOutcome.SKIPPED
    assert sink.count() == 0


def _quiet(user, start: str, end: str):
    return services.notification_preferences_update(
        user=user,
        quiet_hours_start=time.fromisoformat(start),
        quiet_hours_end=time.fromisoformat(end),
        set_quiet_hours=True,
    )


def test_quiet_hours_delay_delivery_to_their_end_in_the_users_timezone(
    sink, paris_patient, provider, make_consultation, django_capture_on_commit_callbacks
):
    _quiet(paris_patient, "22:00", "07:00")
    consultation = make_consultation(paris_patient, provider, starts_in=timedelta(days=30))
    # 23:30 in Paris (CET, UTC+1) on 10 March 2031.
    late_evening = datetime(2031, 3, 10, 22, 30, tzinfo=UTC)
    with time_machine.travel(late_evening, tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            [notification] = book_event(consultation)
        assert notification.next_attempt_at == datetime(2031, 3, 11, 6, 0, tzinfo=UTC)
        assert notification.nudged_at is None  # too far to count down: the sweeper's job
        assert services.outbox_sweep().enqueued == 0
    assert sink.count() == 0
    with (
        time_machine.travel(datetime(2031, 3, 11, 6, 0, 5, tzinfo=UTC), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert services.outbox_sweep().enqueued == 1
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT
    assert sink.count() == 1


def test_quiet_hours_that_start_after_the_event_defer_at_delivery(
    sink, paris_patient, provider, make_consultation
):
    noon = datetime(2031, 6, 2, 10, 0, tzinfo=UTC)  # 12:00 in Paris (CEST)
    with time_machine.travel(noon, tick=False):
        [notification] = book_event(make_consultation(paris_patient, provider))
        _quiet(paris_patient, "11:30", "13:00")
        outcome = services.notification_deliver(notification_id=notification.pk)
    assert outcome == DeliveryOutcome.DEFERRED
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.PENDING
    assert notification.attempts == 0
    assert notification.next_attempt_at == datetime(2031, 6, 2, 11, 0, tzinfo=UTC)
    assert sink.count() == 0


@pytest.mark.parametrize(
    ("start", "end", "local_now", "expected_local_end"),
    [
        ("22:00", "07:00", "2031-03-10T23:30", "2031-03-11T07:00"),  # wraps midnight
        ("22:00", "07:00", "2031-03-11T05:00", "2031-03-11T07:00"),  # after midnight
        ("22:00", "07:00", "2031-03-11T07:00", None),  # the end is outside
        ("22:00", "07:00", "2031-03-11T12:00", None),
        ("12:00", "14:00", "2031-03-11T13:59", "2031-03-11T14:00"),
        ("12:00", "14:00", "2031-03-11T11:59", None),
        # DST: Paris springs forward on 30 March 2031, 02:00 -> 03:00.
        ("22:00", "02:30", "2031-03-29T23:00", "2031-03-30T03:30"),
        ("22:00", "07:00", "2031-03-29T23:00", "2031-03-30T07:00"),
    ],
)
def test_quiet_hours_end(paris_patient, start, end, local_now, expected_local_end):
    import zoneinfo

    paris = zoneinfo.ZoneInfo("Europe/Paris")
    preference = _quiet(paris_patient, start, end)
    now = datetime.fromisoformat(local_now).replace(tzinfo=paris)
    ends = services.quiet_hours_end(preference=preference, tz=paris, now=now)
    if expected_local_end is None:
        assert ends is None
    else:
        assert ends == datetime.fromisoformat(expected_local_end).replace(tzinfo=paris)
        assert ends > now


def test_preferences_reject_unknown_kinds_and_half_quiet_hours(patient):
    from medease.exceptions import InvalidInput

    with pytest.raises(InvalidInput):
        services.notification_preferences_update(user=patient, muted_kinds=["nope"])
    with pytest.raises(InvalidInput):
        services.notification_preferences_update(
            user=patient, quiet_hours_start=time(22), quiet_hours_end=None, set_quiet_hours=True
        )


# --- Reminders ----------------------------------------------------------------------------


def reminders(kind=None):
    queryset = Notification.objects.filter(
        kind__in=[NotificationKind.REMINDER_24H, NotificationKind.REMINDER_1H]
    )
    return queryset.filter(kind=kind) if kind else queryset


def test_reminders_are_written_when_due_and_once(patient, provider, make_consultation):
    in_23h = make_consultation(patient, provider, starts_in=timedelta(hours=23))
    in_50m = make_consultation(patient, provider, starts_in=timedelta(minutes=50))
    make_consultation(patient, provider, starts_in=timedelta(hours=30))  # not yet due
    assert notifications.reminders_create_due() == 2
    assert notifications.reminders_create_due() == 0  # the job ran twice: nothing new
    assert set(reminders().values_list("consultation_id", "kind")) == {
        (in_23h.pk, NotificationKind.REMINDER_24H),
        (in_50m.pk, NotificationKind.REMINDER_1H),
    }
    reminder = reminders(NotificationKind.REMINDER_1H).get()
    assert reminder.user == patient
    assert reminder.expires_at == in_50m.scheduled_start


def test_after_downtime_only_the_nearest_reminder_is_sent(patient, provider, make_consultation):
    # The worker was down for a day: the 24 h reminder was never written, and now the
    # consultation is 40 minutes away. One reminder (1 h), not two.
    consultation = make_consultation(patient, provider, starts_in=timedelta(minutes=40))
    notifications.reminders_create_due()
    assert list(reminders().values_list("consultation_id", "kind")) == [
        (consultation.pk, NotificationKind.REMINDER_1H)
    ]


def test_no_reminders_for_consultations_started_ended_or_cancelled(
    patient, provider, make_consultation
):
    for status in (
        ConsultationStatus.IN_PROGRESS,
        ConsultationStatus.COMPLETED,
        ConsultationStatus.CANCELLED,
        ConsultationStatus.NO_SHOW,
    ):
        make_consultation(patient, provider, starts_in=timedelta(minutes=30), status=status)
    make_consultation(patient, provider, starts_in=-timedelta(minutes=5))  # start has passed
    assert notifications.reminders_create_due() == 0


def test_a_booking_made_inside_a_reminders_window_skips_that_reminder(
    patient, provider, make_consultation
):
    # Booked three hours ahead: the confirmation covers "tomorrow"; the 1 h one still comes.
    consultation = make_consultation(
        patient, provider, starts_in=timedelta(hours=3), created_at=timezone.now()
    )
    assert notifications.reminders_create_due() == 0
    with time_machine.travel(timezone.now() + timedelta(hours=2, minutes=5)):
        assert notifications.reminders_create_due() == 1
    assert reminders().get().kind == NotificationKind.REMINDER_1H
    assert reminders().get().consultation_id == consultation.pk


def test_a_reminder_is_not_delivered_for_a_consultation_cancelled_or_moved_meanwhile(
    sink, patient, provider, make_consultation
):
    cancelled = make_consultation(patient, provider, starts_in=timedelta(minutes=50), minutes=5)
    moved = make_consultation(patient, provider, starts_in=timedelta(minutes=55), minutes=5)
    notifications.reminders_create_due()
    cancelled.status = ConsultationStatus.CANCELLED
    cancelled.save()
    moved.scheduled_start += timedelta(days=1)
    moved.scheduled_end += timedelta(days=1)
    moved.save()
    outcomes = {
        services.notification_deliver(notification_id=pk)
        for pk in reminders().values_list("pk", flat=True)
    }
    assert outcomes == {DeliveryOutcome.SKIPPED}
    assert sink.count() == 0


def test_the_clinic_cores_relevance_check_is_what_skips_a_cancelled_reminder(
    sink, patient, provider, make_consultation
):
    consultation = make_consultation(patient, provider, starts_in=timedelta(minutes=50))
    notifications.reminders_create_due()
    consultation.status = ConsultationStatus.CANCELLED
    consultation.save()
    reminder = reminders().get()
    # The same reminder, written again under another key, for the run without the check.
    spare = services.notification_record(
        user=patient,
        kind=reminder.kind,
        dedupe_key="test:spare",
        payload=reminder.payload,
        consultation_id=consultation.pk,
    )
    assert notifications.still_relevant in relevance.checks_for(NotificationKind.REMINDER_1H)
    outcome = services.notification_deliver(notification_id=reminder.pk)
    assert outcome == DeliveryOutcome.SKIPPED
    reminder.refresh_from_db()
    assert reminder.last_error == "the consultation was cancelled"
    # Without the registered check the outbox knows nothing of consultations: it sends.
    relevance.unregister_relevance_check(
        kinds=notifications.CHECKED_AT_DELIVERY, check=notifications.still_relevant
    )
    try:
        assert services.notification_deliver(notification_id=spare.pk) == DeliveryOutcome.SENT
    finally:
        notifications.register_relevance_checks()
    assert sink.count() == 1


def test_a_registered_check_is_asked_for_its_kinds_only(sink, patient):
    asked = []

    def never(notification, now):
        asked.append(notification.kind)
        return "not wanted any more"

    relevance.register_relevance_check(kinds=[NotificationKind.QUEUE_CALLED], check=never)
    relevance.register_relevance_check(kinds=[NotificationKind.QUEUE_CALLED], check=never)
    try:
        [called, unread] = [
            services.notification_record(
                user=patient, kind=kind, dedupe_key=f"test:{kind}", payload={"from_name": "Dr"}
            )
            for kind in (NotificationKind.QUEUE_CALLED, NotificationKind.UNREAD_MESSAGES)
        ]
        assert services.notification_deliver(notification_id=called.pk) == (DeliveryOutcome.SKIPPED)
        assert services.notification_deliver(notification_id=unread.pk) == DeliveryOutcome.SENT
    finally:
        relevance.unregister_relevance_check(kinds=[NotificationKind.QUEUE_CALLED], check=never)
    assert asked == [NotificationKind.QUEUE_CALLED]  # registered twice, asked once
    called.refresh_from_db()
    assert (called.status, called.last_error) == (NotificationStatus.SKIPPED, "not wanted any more")
    assert never not in relevance.checks_for(NotificationKind.QUEUE_CALLED)


def test_a_reminder_that_would_arrive_after_the_start_is_skipped(
    sink, patient, provider, make_consultation
):
    consultation = make_consultation(patient, provider, starts_in=timedelta(minutes=50))
    notifications.reminders_create_due()
    reminder = reminders().get()
    with time_machine.travel(consultation.scheduled_start + timedelta(minutes=1)):
        outcome = services.notification_deliver(notification_id=reminder.pk)
    assert outcome == DeliveryOutcome.SKIPPED
    assert sink.count() == 0


def test_reminders_catch_up_in_batches(settings, patient, provider, make_consultation):
    for minutes in range(10, 60, 10):
        make_consultation(patient, provider, starts_in=timedelta(minutes=minutes), minutes=5)
    assert notifications.reminders_create_due(batch=2) == 2
    assert notifications.reminders_create_due(batch=2) == 2
    assert notifications.reminders_create_due(batch=2) == 1
    assert notifications.reminders_create_due(batch=2) == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_beats_running_reminders_at_once_write_each_reminder_once(
    patient, provider, make_consultation, make_user
):
    consultations = []
    for index in range(6):
        who = make_user(Role.PATIENT)
        doctor = make_user(Role.PROVIDER, organization=provider.organization)
        consultations.append(
            make_consultation(who, doctor, starts_in=timedelta(minutes=20 + index))
        )
        consultations.append(
            make_consultation(who, doctor, starts_in=timedelta(hours=10, minutes=index))
        )
    barrier = threading.Barrier(4)
    written = []

    def beat():
        try:
            barrier.wait()
            written.append(notifications.reminders_create_due())
        finally:
            connection.close()

    threads = [threading.Thread(target=beat) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(written) == len(consultations) == reminders().count()
    pairs = list(reminders().values_list("consultation_id", "kind"))
    assert len(pairs) == len(set(pairs))


def test_a_confirmation_held_by_quiet_hours_is_skipped_if_the_booking_was_cancelled(
    sink, patient, provider, make_consultation
):
    consultation = make_consultation(patient, provider)
    [notification] = book_event(consultation)
    consultation.status = ConsultationStatus.CANCELLED
    consultation.save()
    outcome = services.notification_deliver(notification_id=notification.pk)
    assert outcome == DeliveryOutcome.SKIPPED
    notification.refresh_from_db()
    assert notification.last_error == "the consultation was cancelled"
    assert sink.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_booking_that_loses_the_slot_race_notifies_nobody(sink, patient, provider, make_user):
    from consultations import services as consultation_services
    from consultations.models import Slot
    from medease.exceptions import Conflict

    start = (timezone.now() + timedelta(days=2)).replace(second=0, microsecond=0)
    slot = Slot.objects.create(provider=provider, start=start, end=start + timedelta(minutes=30))
    consultation_services.consultation_book(patient=patient, slot_id=slot.pk, reason="Rash")
    with pytest.raises(Conflict):
        consultation_services.consultation_book(
            patient=make_user(Role.PATIENT), slot_id=slot.pk, reason="Rash"
        )
    # The losing booking's transaction rolled back with its outbox row: one email, the winner's.
    assert list(Notification.objects.values_list("user_id", flat=True)) == [patient.pk]
    assert [m["To"] for m in sink.messages] == [patient.email]
