"""The lifecycle table (consultations/lifecycle.py) is what the code actually does: the
database constraint, the services, the API routes and the chat rule all follow it."""

from __future__ import annotations

import contextlib
import re
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.urls import resolve, reverse

from accounts.models import Role
from consultations import lifecycle, services
from consultations.lifecycle import ConsultationStatus
from consultations.models import Consultation
from medease.exceptions import Forbidden, NotFound
from messaging import permissions as chat_permissions

pytestmark = pytest.mark.django_db


@pytest.mark.postgres
def test_the_exclusion_constraint_covers_exactly_the_active_statuses():
    """Migration 0002 spells the active set in SQL; it must match the table's."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
            ["consultations_provider_no_overlap"],
        )
        (definition,) = cursor.fetchone()
    where = definition.split("WHERE", 1)[1]
    assert set(re.findall(r"'([a-z_]+)'", where)) == set(lifecycle.ACTIVE_STATUSES)


def test_every_status_has_a_state_and_every_transition_names_real_fields():
    assert set(lifecycle.STATES) == set(ConsultationStatus.values)
    fields = {field.name for field in Consultation._meta.get_fields()}
    for transition in lifecycle.TRANSITIONS.values():
        assert transition.sources <= set(ConsultationStatus.values), transition.action
        assert transition.target in ConsultationStatus.values, transition.action
        assert transition.roles <= set(Role.values), transition.action
        for field in (transition.stamp, transition.stamp_actor, transition.note_field):
            assert field is None or field in fields, (transition.action, field)


def test_derived_sets():
    assert set(lifecycle.ACTIVE_STATUSES) == {"scheduled", "in_progress"}
    assert set(lifecycle.TREATING_STATUSES) == {"scheduled", "in_progress", "completed"}
    for status in ConsultationStatus.values:
        assert chat_permissions.is_open(status) == (status in lifecycle.ACTIVE_STATUSES)
    assert set(lifecycle.ACTIVE_STATUSES) == chat_permissions.OPEN_STATUSES


def test_each_api_transition_has_its_route():
    assert set(lifecycle.API_TRANSITIONS) == {"cancel", "start", "complete", "no-show"}
    for segment, transition in lifecycle.API_TRANSITIONS.items():
        url = reverse(f"consultation-{segment}", kwargs={"consultation_id": 7})
        assert url == f"/api/v1/consultations/7/{segment}"
        assert resolve(url).func.view_initkwargs["transition"] is transition


def test_actions_with_their_own_service_are_refused_by_the_generic_one(
    patient, provider, make_slot, book
):
    consultation = book(patient, make_slot(provider))
    with pytest.raises(ValueError, match="own service"):
        services.consultation_transition(
            consultation=consultation, action="reschedule", actor=provider
        )


@pytest.mark.parametrize("segment", sorted(lifecycle.API_TRANSITIONS))
def test_the_roles_of_the_table_are_the_roles_the_service_lets_act(
    segment, patient, provider, staff, make_slot, book
):
    """For every action with an endpoint and every role seeing the consultation: it acts
    exactly when the table says so (stamping what the table says), else Forbidden."""
    transition = lifecycle.API_TRANSITIONS[segment]
    actors = {Role.PATIENT: patient, Role.PROVIDER: provider, Role.STAFF: staff}
    for hours, (role, actor) in enumerate(actors.items(), start=2):
        consultation = book(patient, make_slot(provider, hours=hours))
        if ConsultationStatus.IN_PROGRESS in transition.sources:
            services.consultation_start(consultation=consultation, actor=provider)
        after_start = time_machine.travel(consultation.scheduled_start + timedelta(minutes=1))
        with after_start if transition.after_start else contextlib.nullcontext():
            if role not in transition.roles:
                with pytest.raises(Forbidden):
                    services.consultation_transition(
                        consultation=consultation, action=transition.action, actor=actor
                    )
                continue
            services.consultation_transition(
                consultation=consultation, action=transition.action, actor=actor
            )
        stored = Consultation.objects.get(pk=consultation.pk)
        assert stored.status == transition.target
        assert getattr(stored, transition.stamp) is not None
        if transition.stamp_actor:
            assert getattr(stored, f"{transition.stamp_actor}_id") == actor.pk


def test_outsiders_get_not_found_whatever_the_action(
    patient, provider, other_patient, other_provider, other_staff, make_slot, book
):
    consultation = book(patient, make_slot(provider))
    for action in lifecycle.API_TRANSITIONS.values():
        for outsider in (other_patient, other_provider, other_staff):
            with pytest.raises(NotFound):
                services.consultation_transition(
                    consultation=consultation, action=action.action, actor=outsider
                )
    assert Consultation.objects.get(pk=consultation.pk).status == ConsultationStatus.SCHEDULED


def test_slot_invalidation_follows_activity():
    assert lifecycle.TRANSITIONS["start"].frees_or_takes_time is False
    for action in ("cancel", "complete", "no_show", "reschedule"):
        assert lifecycle.TRANSITIONS[action].frees_or_takes_time is True
