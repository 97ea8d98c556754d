"""Booking and lifecycle services: what the database guarantees and who may do what."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.db import IntegrityError, transaction

from accounts.models import Role
from consultations import services
from consultations.models import Consultation, ConsultationKind, ConsultationStatus
from medease.exceptions import Conflict, Forbidden, InvalidInput, NotFound
from tests.conftest import on_postgres
from tests.consultations.conftest import in_hours
from workers.models import Notification, NotificationKind, NotificationStatus
from workers.services import notification_preferences_update

pytestmark = pytest.mark.django_db


def test_booking_creates_a_scheduled_consultation_copying_the_slot(patient, provider, make_slot):
    slot = make_slot(provider, hours=5)
    consultation, created = services.consultation_book(
        patient=patient, slot_id=slot.pk, reason="Rash"
    )
    assert created is True
    assert consultation.status == ConsultationStatus.SCHEDULED
    assert consultation.kind == ConsultationKind.BOOKED
    assert consultation.organization_id == provider.organization_id
    assert (consultation.scheduled_start, consultation.scheduled_end) == (slot.start, slot.end)
    assert consultation.reason == "Rash"


def test_a_booked_slot_cannot_be_booked_again(patient, other_patient, provider, make_slot, book):
    slot = make_slot(provider)
    book(patient, slot)
    with pytest.raises(Conflict) as caught:
        book(other_patient, slot)
    assert caught.value.code == "slot_taken"
    assert Consultation.objects.filter(slot=slot).count() == 1


def test_the_database_refuses_a_second_active_booking_even_without_the_service(
    patient, other_patient, provider, make_slot, book
):
    slot = make_slot(provider)
    first = book(patient, slot)
    with pytest.raises(IntegrityError), transaction.atomic():
        Consultation.objects.create(
            patient=other_patient,
            provider=provider,
            organization=provider.organization,
            slot=slot,
            scheduled_start=first.scheduled_start,
            scheduled_end=first.scheduled_end,
        )


def test_cancelling_frees_the_slot_for_someone_else(
    patient, other_patient, provider, make_slot, book
):
    slot = make_slot(provider)
    first = book(patient, slot)
    services.consultation_cancel(consultation=first, actor=patient)
    second = book(other_patient, slot)
    assert second.status == ConsultationStatus.SCHEDULED
    statuses = sorted(Consultation.objects.filter(slot=slot).values_list("status", flat=True))
    assert statuses == ["cancelled", "scheduled"]


def test_a_past_slot_cannot_be_booked(patient, provider, make_slot):
    slot = make_slot(provider, hours=-1)
    with pytest.raises(Conflict) as caught:
        services.consultation_book(patient=patient, slot_id=slot.pk)
    assert caught.value.code == "slot_unavailable"


def test_an_unknown_slot_is_invalid_input(patient):
    with pytest.raises(InvalidInput) as caught:
        services.consultation_book(patient=patient, slot_id=987654)
    assert "slot" in caught.value.fields


@pytest.mark.parametrize("slot_id", [2**63, 10**20])
def test_a_slot_id_past_any_row_is_invalid_input_not_an_error(patient, slot_id):
    with pytest.raises(InvalidInput):
        services.consultation_book(patient=patient, slot_id=slot_id)


def test_an_inactive_providers_slot_is_unknown(patient, provider, make_slot):
    slot = make_slot(provider)
    provider.is_active = False
    provider.save(update_fields=["is_active"])
    with pytest.raises(InvalidInput):
        services.consultation_book(patient=patient, slot_id=slot.pk)


def test_the_booking_carries_its_provider_and_clinic_and_loads_the_rest_on_demand(
    patient, provider, make_slot
):
    consultation, _ = services.consultation_book(patient=patient, slot_id=make_slot(provider).pk)
    assert consultation.provider.full_name == provider.full_name
    assert consultation.organization.name == provider.organization.name
    # Read by the slot look-up with only what a booking needs; the rest is still there.
    assert consultation.provider.email == provider.email
    assert consultation.organization.timezone == provider.organization.timezone


def _notification_preference_reads(queries) -> list[str]:
    return [q["sql"] for q in queries if 'FROM "workers_notificationpreference"' in q["sql"]]


def test_a_booking_without_saved_preferences_reads_none_apart(
    patient, provider, make_slot, django_assert_max_num_queries
):
    with django_assert_max_num_queries(20) as captured:
        services.consultation_book(patient=patient, slot_id=make_slot(provider).pk)
    [statement] = _notification_preference_reads(captured.captured_queries)
    # Only the slot look-up's EXISTS: no query of its own in the outbox.
    assert "EXISTS" in statement and '"consultations_slot"' in statement
    notification = Notification.objects.get(user=patient)
    assert notification.status == NotificationStatus.PENDING


def test_a_booking_honours_saved_preferences(patient, provider, make_slot):
    notification_preferences_update(user=patient, muted_kinds=[NotificationKind.BOOKING_CONFIRMED])
    services.consultation_book(patient=patient, slot_id=make_slot(provider).pk)
    notification = Notification.objects.get(user=patient)
    assert notification.status == NotificationStatus.SKIPPED


def test_only_patients_book(provider, staff, make_slot):
    slot = make_slot(provider)
    for user in (provider, staff):
        with pytest.raises(Forbidden):
            services.consultation_book(patient=user, slot_id=slot.pk)


def test_idempotency_key_returns_the_first_booking(patient, provider, make_slot):
    slot = make_slot(provider)
    first, created = services.consultation_book(
        patient=patient, slot_id=slot.pk, idempotency_key="k-1"
    )
    again, created_again = services.consultation_book(
        patient=patient, slot_id=slot.pk, idempotency_key="k-1"
    )
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk
    assert Consultation.objects.count() == 1


def test_idempotency_key_reused_for_another_slot_is_a_conflict(patient, provider, make_slot):
    slot, other_slot = make_slot(provider, hours=3), make_slot(provider, hours=6)
    services.consultation_book(patient=patient, slot_id=slot.pk, idempotency_key="k-2")
    with pytest.raises(Conflict) as caught:
        services.consultation_book(patient=patient, slot_id=other_slot.pk, idempotency_key="k-2")
    assert caught.value.code == "idempotency_key_reused"


def test_the_same_key_from_two_patients_is_two_bookings(
    patient, other_patient, provider, make_slot
):
    slot, other_slot = make_slot(provider, hours=3), make_slot(provider, hours=6)
    a, _ = services.consultation_book(patient=patient, slot_id=slot.pk, idempotency_key="same")
    b, _ = services.consultation_book(
        patient=other_patient, slot_id=other_slot.pk, idempotency_key="same"
    )
    assert a.pk != b.pk


def test_overlapping_slots_of_one_provider_cannot_both_be_active(
    patient, other_patient, provider, make_slot, book
):
    """Two slots that overlap (e.g. after the consultation length changed): the provider
    still cannot have both booked. PostgreSQL: exclusion constraint; SQLite: the guard."""
    start = in_hours(10)
    first = make_slot(provider, start=start, minutes=30)
    overlapping = make_slot(provider, start=start + timedelta(minutes=15), minutes=30)
    book(patient, first)
    with pytest.raises(Conflict) as caught:
        book(other_patient, overlapping)
    assert caught.value.code == "provider_busy"


@pytest.mark.postgres
def test_postgres_exclusion_constraint_refuses_overlap_without_the_service(
    patient, other_patient, provider
):
    assert on_postgres()
    start = in_hours(10)
    Consultation.objects.create(
        patient=patient,
        provider=provider,
        organization=provider.organization,
        scheduled_start=start,
        scheduled_end=start + timedelta(minutes=30),
    )
    with (
        pytest.raises(IntegrityError, match="consultations_provider_no_overlap"),
        transaction.atomic(),
    ):
        Consultation.objects.create(
            patient=other_patient,
            provider=provider,
            organization=provider.organization,
            scheduled_start=start + timedelta(minutes=29),
            scheduled_end=start + timedelta(minutes=59),
        )
    # Back-to-back is fine ([) ranges), and a cancelled one does not count.
    Consultation.objects.create(
        patient=other_patient,
        provider=provider,
        organization=provider.organization,
        scheduled_start=start + timedelta(minutes=30),
        scheduled_end=start + timedelta(minutes=60),
    )
    Consultation.objects.create(
        patient=other_patient,
        provider=provider,
        organization=provider.organization,
        status=ConsultationStatus.CANCELLED,
        scheduled_start=start,
        scheduled_end=start + timedelta(minutes=30),
    )


# --- Lifecycle ----------------------------------------------------------------------------


def test_full_lifecycle_stamps_each_transition(patient, provider, make_slot, book):
    consultation = book(patient, make_slot(provider))
    services.consultation_start(consultation=consultation, actor=provider)
    services.consultation_complete(
        consultation=consultation, actor=provider, provider_notes="All well."
    )
    consultation.refresh_from_db()
    assert consultation.status == ConsultationStatus.COMPLETED
    assert consultation.started_at is not None
    assert consultation.completed_at >= consultation.started_at
    assert consultation.provider_notes == "All well."


@pytest.mark.parametrize(
    ("setup", "action"),
    [
        ([], "complete"),  # scheduled → completed skips in_progress
        (["cancel"], "start"),
        (["cancel"], "cancel"),
        (["start"], "cancel"),
        (["start"], "no_show"),
        (["start", "complete"], "start"),
        (["start", "complete"], "cancel"),
    ],
)
def test_invalid_transitions_are_conflicts(patient, provider, make_slot, book, setup, action):
    consultation = book(patient, make_slot(provider, hours=1))
    run = {
        "cancel": lambda: services.consultation_cancel(consultation=consultation, actor=provider),
        "start": lambda: services.consultation_start(consultation=consultation, actor=provider),
        "complete": lambda: services.consultation_complete(
            consultation=consultation, actor=provider
        ),
        "no_show": lambda: services.consultation_mark_no_show(
            consultation=consultation, actor=provider
        ),
    }
    # After the start time, so "no-show" is not refused for being early.
    with time_machine.travel(consultation.scheduled_start + timedelta(minutes=5)):
        for step in setup:
            run[step]()
        before = Consultation.objects.get(pk=consultation.pk).status
        with pytest.raises(Conflict) as caught:
            run[action]()
    assert caught.value.code == "invalid_transition"
    assert Consultation.objects.get(pk=consultation.pk).status == before


def test_a_stale_object_cannot_overwrite_a_newer_status(patient, provider, make_slot, book):
    """Two requests loaded the consultation; the first cancels, the second tries to start."""
    consultation = book(patient, make_slot(provider))
    stale_copy = Consultation.objects.get(pk=consultation.pk)
    services.consultation_cancel(consultation=consultation, actor=patient)
    with pytest.raises(Conflict):
        services.consultation_start(consultation=stale_copy, actor=provider)
    assert Consultation.objects.get(pk=consultation.pk).status == ConsultationStatus.CANCELLED


def test_patients_may_only_cancel(patient, provider, make_slot, book):
    consultation = book(patient, make_slot(provider))
    with pytest.raises(Forbidden):
        services.consultation_start(consultation=consultation, actor=patient)


def test_strangers_get_not_found(
    patient, other_patient, other_provider, other_staff, provider, make_slot, book
):
    consultation = book(patient, make_slot(provider))
    for stranger in (other_patient, other_provider, other_staff):
        with pytest.raises(NotFound):
            services.consultation_cancel(consultation=consultation, actor=stranger)


def test_staff_of_the_clinic_may_cancel(patient, provider, staff, make_slot, book):
    consultation = book(patient, make_slot(provider))
    services.consultation_cancel(consultation=consultation, actor=staff, reason="Provider ill")
    consultation.refresh_from_db()
    assert consultation.cancelled_by == staff
    assert consultation.cancellation_reason == "Provider ill"


def test_another_provider_of_the_same_clinic_may_not_act(
    patient, provider, make_user, organization, make_slot, book
):
    colleague = make_user(Role.PROVIDER, organization=organization)
    consultation = book(patient, make_slot(provider))
    with pytest.raises(NotFound):
        services.consultation_start(consultation=consultation, actor=colleague)


def test_patient_cancel_cutoff(settings, patient, provider, make_slot, book):
    settings.CONSULTATION_CANCEL_CUTOFF_MINUTES = 120
    consultation = book(patient, make_slot(provider, hours=1))
    with pytest.raises(Conflict) as caught:
        services.consultation_cancel(consultation=consultation, actor=patient)
    assert caught.value.code == "cancellation_closed"
    consultation.refresh_from_db()
    assert consultation.status == ConsultationStatus.SCHEDULED
    # The clinic can still cancel.
    services.consultation_cancel(consultation=consultation, actor=provider)
    consultation.refresh_from_db()
    assert consultation.status == ConsultationStatus.CANCELLED


def test_patient_cannot_cancel_after_the_start_by_default(patient, provider, make_slot, book):
    consultation = book(patient, make_slot(provider, hours=1))
    with (
        time_machine.travel(consultation.scheduled_start + timedelta(minutes=1)),
        pytest.raises(Conflict),
    ):
        services.consultation_cancel(consultation=consultation, actor=patient)


def test_provider_may_start_early(patient, provider, make_slot, book):
    consultation = book(patient, make_slot(provider, hours=30))
    services.consultation_start(consultation=consultation, actor=provider)
    stored = Consultation.objects.get(pk=consultation.pk)
    assert stored.status == ConsultationStatus.IN_PROGRESS
    assert stored.started_at is not None and stored.started_at < stored.scheduled_start


def test_no_show_only_after_the_start(patient, provider, make_slot, book):
    consultation = book(patient, make_slot(provider, hours=1))
    with pytest.raises(Conflict) as caught:
        services.consultation_mark_no_show(consultation=consultation, actor=provider)
    assert caught.value.code == "too_early"
    with time_machine.travel(consultation.scheduled_start + timedelta(minutes=10)):
        services.consultation_mark_no_show(consultation=consultation, actor=provider)
    consultation.refresh_from_db()
    assert consultation.status == ConsultationStatus.NO_SHOW
    assert consultation.no_show_at is not None


def test_overdue_scheduled_consultations_become_no_shows(patient, provider, make_slot, book):
    overdue = book(patient, make_slot(provider, hours=1))
    later = book(patient, make_slot(provider, hours=5))
    with time_machine.travel(overdue.scheduled_end + timedelta(minutes=16)):
        assert services.consultations_mark_overdue_no_shows() == 1
        assert services.consultations_mark_overdue_no_shows() == 0  # idempotent
    overdue.refresh_from_db()
    later.refresh_from_db()
    assert overdue.status == ConsultationStatus.NO_SHOW
    assert later.status == ConsultationStatus.SCHEDULED


# --- Reschedule ----------------------------------------------------------------------------


def test_reschedule_cancels_and_books_in_one_go(patient, provider, make_slot, book):
    old = book(patient, make_slot(provider, hours=3), reason="Back pain")
    target = make_slot(provider, hours=8)
    new = services.consultation_reschedule(consultation=old, actor=patient, slot_id=target.pk)
    old.refresh_from_db()
    assert old.status == ConsultationStatus.CANCELLED
    assert old.cancellation_reason == "rescheduled"
    assert new.slot_id == target.pk
    assert new.status == ConsultationStatus.SCHEDULED
    assert new.rescheduled_from_id == old.pk
    assert new.reason == "Back pain"


def test_reschedule_to_a_taken_slot_changes_nothing(
    patient, other_patient, provider, make_slot, book
):
    old = book(patient, make_slot(provider, hours=3))
    taken = make_slot(provider, hours=8)
    book(other_patient, taken)
    with pytest.raises(Conflict):
        services.consultation_reschedule(consultation=old, actor=patient, slot_id=taken.pk)
    old.refresh_from_db()
    assert old.status == ConsultationStatus.SCHEDULED
    assert Consultation.objects.filter(patient=patient).count() == 1


def test_reschedule_into_an_overlapping_slot_of_the_same_consultation(
    patient, provider, make_slot, book
):
    """Moving 15 minutes later overlaps the old time: fine, the old one is cancelled first."""
    start = in_hours(4)
    old = book(patient, make_slot(provider, start=start))
    shifted = make_slot(provider, start=start + timedelta(minutes=15))
    new = services.consultation_reschedule(consultation=old, actor=provider, slot_id=shifted.pk)
    assert new.scheduled_start == shifted.start


def test_reschedule_to_another_provider_is_refused(
    patient, provider, other_provider, make_slot, book
):
    old = book(patient, make_slot(provider, hours=3))
    elsewhere = make_slot(other_provider, hours=5)
    with pytest.raises(InvalidInput):
        services.consultation_reschedule(consultation=old, actor=patient, slot_id=elsewhere.pk)


def test_a_consultation_is_rescheduled_at_most_once(patient, provider, make_slot, book):
    old = book(patient, make_slot(provider, hours=3))
    services.consultation_reschedule(
        consultation=old, actor=patient, slot_id=make_slot(provider, hours=5).pk
    )
    stale = Consultation.objects.get(pk=old.pk)
    stale.status = ConsultationStatus.SCHEDULED  # as a request that loaded it earlier sees it
    with pytest.raises(Conflict):
        services.consultation_reschedule(
            consultation=stale, actor=patient, slot_id=make_slot(provider, hours=7).pk
        )
    assert Consultation.objects.filter(status="scheduled").count() == 1
