"""Periodic jobs: wired into the beat schedule, idempotent, and doing the services' work."""

from __future__ import annotations

from datetime import time, timedelta

import pytest
import time_machine
from django.utils import timezone

from consultations import services, tasks
from consultations.models import ConsultationStatus, QueueStatus, Slot
from consultations.slotting import Window
from workers.schedule import BEAT_SCHEDULE

pytestmark = pytest.mark.django_db

JOBS = {
    "consultations.materialize_slots": tasks.materialize_slots,
    "consultations.expire_queue_entries": tasks.expire_queue_entries,
    "consultations.mark_no_shows": tasks.mark_no_shows,
    "consultations.send_reminders": tasks.send_reminders,
}


def test_every_job_is_scheduled_on_the_maintenance_queue():
    scheduled = {entry["task"]: entry for entry in BEAT_SCHEDULE.values()}
    for name, task in JOBS.items():
        assert task.name == name
        assert task.acks_late is True
        assert name in scheduled, f"{name} is not in the beat schedule"
        assert scheduled[name]["options"]["queue"] == "maintenance"


def test_materialize_job_is_idempotent(provider, settings):
    settings.SLOTS_MATERIALIZE_DAYS = 3
    services.availability_replace(
        provider=provider, windows=[Window(d, time(9), time(12)) for d in range(7)]
    )
    Slot.objects.all().delete()
    assert tasks.materialize_slots() == 1
    count = Slot.objects.count()
    assert count >= 2 * 6
    tasks.materialize_slots()
    assert Slot.objects.count() == count


def test_no_show_and_expiry_jobs(patient, other_patient, provider, make_slot, book, settings):
    settings.QUEUE_ENTRY_STALE_MINUTES = 30
    consultation = book(patient, make_slot(provider, hours=1))
    entry = services.queue_join(patient=other_patient, provider=provider)
    with time_machine.travel(timezone.now() + timedelta(hours=2)):
        assert tasks.mark_no_shows() == 1
        assert tasks.mark_no_shows() == 0
        assert tasks.expire_queue_entries() == 1
        assert tasks.expire_queue_entries() == 0
    consultation.refresh_from_db()
    entry.refresh_from_db()
    assert consultation.status == ConsultationStatus.NO_SHOW
    assert entry.status == QueueStatus.EXPIRED


def test_reminder_job_writes_each_due_reminder_once(patient, provider, make_slot, book):
    from workers.models import Notification, NotificationKind

    consultation = book(patient, make_slot(provider, hours=30))
    # Booked well ahead: travel to 23 h before the start, inside the 24 h reminder's window.
    with time_machine.travel(consultation.scheduled_start - timedelta(hours=23)):
        assert tasks.send_reminders() == 1
        assert tasks.send_reminders() == 0
    reminder = Notification.objects.get(kind=NotificationKind.REMINDER_24H)
    assert (reminder.user_id, reminder.consultation_id) == (patient.pk, consultation.pk)
