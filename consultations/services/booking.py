"""Booking a slot: one INSERT that the database accepts or refuses, idempotent per key."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Role, User
from consultations import notifications
from consultations.models import Consultation, ConsultationKind, ConsultationStatus, Slot
from consultations.services._common import (
    _conflict_from,
    _guard_provider_overlap,
    _invalidate_for,
)
from medease import db as db_routing
from medease.exceptions import Conflict, Forbidden, InvalidInput


def _replay(existing: Consultation, slot_id: int, reason: str) -> tuple[Consultation, bool]:
    # A replay must be the same request: another slot or reason under the key is a reuse.
    if existing.slot_id != slot_id or existing.reason != reason:
        raise Conflict(
            "This Idempotency-Key was already used for a different booking.",
            code="idempotency_key_reused",
        )
    return existing, False


def _by_idempotency_key(*, patient: User, key: str) -> Consultation | None:
    return (
        Consultation.objects.select_related("patient", "provider")
        .filter(patient=patient, idempotency_key=key)
        .first()
    )


def consultation_book(
    *, patient: User, slot_id: int, reason: str = "", idempotency_key: str = ""
) -> tuple[Consultation, bool]:
    """Book a slot for a patient. Returns (consultation, created).

    A retry with the same ``idempotency_key`` returns the first booking (created=False).
    The database refuses a second booking of the slot, also under concurrency: Conflict.
    """
    if patient.role != Role.PATIENT:
        raise Forbidden("Only patients book consultations.")
    # A retry under an Idempotency-Key is told apart from a new booking only when something
    # refuses it (the unique (patient, key) index at the latest): the first request of a
    # key, the common case, costs no look-up of the key.
    slot = (
        Slot.objects.select_related("provider__organization")
        .filter(pk=slot_id, provider__is_active=True, provider__role=Role.PROVIDER)
        .first()
    )
    refusal = None
    if slot is None:
        refusal = InvalidInput("Unknown slot.", fields={"slot": ["No such slot."]})
    elif slot.start <= timezone.now():
        refusal = Conflict("This slot has already started.", code="slot_unavailable")
    if refusal is not None:
        existing = idempotency_key and _by_idempotency_key(patient=patient, key=idempotency_key)
        if existing:
            return _replay(existing, slot_id, reason)
        raise refusal
    try:
        with transaction.atomic():
            # The INSERT is the check: the partial unique index admits one active booking,
            # and the (patient, key) index one booking per Idempotency-Key.
            consultation = Consultation.objects.create(
                patient=patient,
                provider=slot.provider,
                organization=slot.provider.organization,
                slot=slot,
                kind=ConsultationKind.BOOKED,
                status=ConsultationStatus.SCHEDULED,
                reason=reason,
                scheduled_start=slot.start,
                scheduled_end=slot.end,
                idempotency_key=idempotency_key,
            )
            _guard_provider_overlap(
                provider_id=slot.provider_id,
                start=slot.start,
                end=slot.end,
                exclude_id=consultation.pk,
            )
            notifications.notify_consultation_event(
                consultation=consultation, kind="booking_confirmed"
            )
            _invalidate_for(consultation)
    except IntegrityError as exc:
        if idempotency_key:
            # A retry of the same request (earlier or concurrent) holds the key: answer
            # with its booking, read from the primary (a replica may not have it yet).
            with db_routing.use_primary():
                existing = _by_idempotency_key(patient=patient, key=idempotency_key)
            if existing is not None:
                return _replay(existing, slot_id, reason)
        raise _conflict_from(exc) from exc
    return consultation, True
