"""No-show attribution from the visit's facts: a provider who never joined is reported to
the patient and the clinic's staff, and is never counted as the patient's no-show."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Role
from consultations import services as consultation_services
from consultations.models import ConsultationStatus
from medease.exceptions import Conflict
from tests.messaging.conftest import make_consultation
from visits import services, tasks
from workers import relevance
from workers.channels import channel_for
from workers.models import Notification

pytestmark = pytest.mark.django_db


@pytest.fixture
def past_visit(chat):
    """A visit that ended 20 minutes ago (past the default 15-minute grace)."""
    consultation = make_consultation(patient=chat.patient, provider=chat.provider, hours=-1)
    consultation.__class__.objects.filter(pk=consultation.pk).update(
        scheduled_start=timezone.now() - timedelta(minutes=50),
        scheduled_end=timezone.now() - timedelta(minutes=20),
    )
    consultation.refresh_from_db()
    return consultation


def reports():
    return sorted(
        Notification.objects.filter(kind=services.PROVIDER_ABSENT).values_list(
            "user_id", "consultation_id"
        )
    )


def test_an_absent_provider_is_reported_not_the_patient(
    chat, past_visit, make_user, other_organization
):
    services.call_join(consultation=past_visit, user=chat.patient)
    make_user(Role.STAFF, organization=other_organization)  # another clinic: not told
    assert services.visits_report_absent_providers() == 1
    assert reports() == sorted([(chat.patient.pk, past_visit.pk), (chat.staff.pk, past_visit.pk)])
    past_visit.refresh_from_db()
    assert past_visit.status == ConsultationStatus.SCHEDULED  # not the patient's no-show
    # A second run writes nothing new.
    assert services.visits_report_absent_providers() == 0
    assert len(reports()) == 2

    row = Notification.objects.get(kind=services.PROVIDER_ABSENT, user=chat.patient)
    message = channel_for(row.channel).render(notification=row)
    assert "did not join" in message.subject
    assert "not counted as a missed visit" in message.text
    staff_row = Notification.objects.get(kind=services.PROVIDER_ABSENT, user=chat.staff)
    assert (
        "not marked as a no-show"
        in channel_for(staff_row.channel).render(notification=staff_row).text
    )


def test_only_past_the_grace_and_only_when_the_patient_came(chat, past_visit, settings):
    # Nobody joined: not a video visit that went wrong (the clinic's own no-show job rules).
    assert services.visits_report_absent_providers() == 0
    services.call_join(consultation=past_visit, user=chat.patient)
    settings.VISIT_NO_SHOW_GRACE_MINUTES = 30  # ended 20 minutes ago: still within it
    assert services.visits_report_absent_providers() == 0
    settings.VISIT_NO_SHOW_GRACE_MINUTES = 15
    assert services.visits_report_absent_providers() == 1


def test_a_provider_who_joined_is_not_reported(chat, past_visit):
    services.call_join(consultation=past_visit, user=chat.patient)
    services.call_join(consultation=past_visit, user=chat.provider)
    past_visit.refresh_from_db()
    assert past_visit.status == ConsultationStatus.IN_PROGRESS
    assert services.visits_report_absent_providers() == 0


def test_a_late_provider_drops_the_queued_report(chat, past_visit):
    services.call_join(consultation=past_visit, user=chat.patient)
    services.visits_report_absent_providers()
    row = Notification.objects.get(kind=services.PROVIDER_ABSENT, user=chat.patient)
    assert relevance.reason_not_to_send(row, now=timezone.now()) is None
    services.call_join(consultation=past_visit, user=chat.provider)
    row.refresh_from_db()
    assert relevance.reason_not_to_send(row, now=timezone.now()) == "the provider joined the call"


def test_a_patient_who_never_joined_a_started_visit_is_a_no_show(
    chat, past_visit, django_capture_on_commit_callbacks
):
    services.call_join(consultation=past_visit, user=chat.provider)
    past_visit.refresh_from_db()
    assert past_visit.status == ConsultationStatus.IN_PROGRESS
    with django_capture_on_commit_callbacks(execute=True):
        assert services.visits_mark_patient_no_shows() == 1
    past_visit.refresh_from_db()
    assert past_visit.status == ConsultationStatus.NO_SHOW
    assert past_visit.no_show_at is not None
    assert Notification.objects.filter(kind="no_show_marked", user=chat.patient).exists()
    # The call ended with the consultation (lifecycle.on_closed, after commit).
    call = past_visit.call
    call.refresh_from_db()
    assert call.status == "ended"
    assert not call.participants.filter(left_at__isnull=True).exists()
    assert services.visits_mark_patient_no_shows() == 0  # twice: nothing more


def test_a_patient_who_joined_is_never_a_no_show(chat, past_visit, settings):
    services.call_join(consultation=past_visit, user=chat.patient)
    services.call_join(consultation=past_visit, user=chat.provider)
    assert services.visits_mark_patient_no_shows() == 0
    with pytest.raises(Conflict):
        consultation_services.consultation_mark_visit_no_show(
            consultation=past_visit, actor=chat.provider
        )


def test_the_clinic_job_leaves_a_patient_who_waited_for_an_absent_provider(chat, past_visit):
    services.call_join(consultation=past_visit, user=chat.patient)
    assert consultation_services.consultations_mark_overdue_no_shows() == 0
    past_visit.refresh_from_db()
    assert past_visit.status == ConsultationStatus.SCHEDULED
    assert services.visits_report_absent_providers() == 1


def test_the_task_runs_both_sides(chat, past_visit, make_user):
    services.call_join(consultation=past_visit, user=chat.patient)
    assert tasks.attribute_no_shows.apply().get() == {
        "patient_no_shows": 0,
        "absent_providers": 1,
    }
