"""What the clinic core's services share: reading constraint violations, the SQLite stand-in
for the overlap constraint, the provider lock and cache invalidation."""

from __future__ import annotations

import logging

from django.db import IntegrityError, connection

from accounts.models import User
from consultations import caching
from consultations.lifecycle import ACTIVE_STATUSES
from consultations.models import Consultation
from medease.exceptions import Conflict

logger = logging.getLogger("consultations")

SLOT_CONSTRAINT = "consultations_slot_booked_once"
OVERLAP_CONSTRAINT = "consultations_provider_no_overlap"
IDEMPOTENCY_CONSTRAINT = "consultations_patient_idempotency_key"


def _constraint_name(exc: IntegrityError) -> str:
    """Which constraint refused a write (PostgreSQL names it; SQLite names the columns)."""
    diag = getattr(exc.__cause__, "diag", None)
    name = getattr(diag, "constraint_name", None)
    if name:
        return name
    message = str(exc)
    for known in (SLOT_CONSTRAINT, OVERLAP_CONSTRAINT, IDEMPOTENCY_CONSTRAINT):
        if known in message:
            return known
    if "idempotency_key" in message:
        return IDEMPOTENCY_CONSTRAINT
    if "slot_id" in message:
        return SLOT_CONSTRAINT
    return ""


def _conflict_from(exc: IntegrityError) -> Conflict:
    name = _constraint_name(exc)
    if name == OVERLAP_CONSTRAINT:
        return Conflict(
            "The provider already has a consultation at that time.", code="provider_busy"
        )
    if name == SLOT_CONSTRAINT:
        return Conflict("This slot has just been booked by someone else.", code="slot_taken")
    logger.warning("unexpected integrity error: %s", exc)
    return Conflict("The request conflicts with the current state.")


def _guard_provider_overlap(*, provider_id: int, start, end, exclude_id: int | None = None) -> None:
    """SQLite stand-in for the PostgreSQL exclusion constraint (call it after the INSERT).

    PostgreSQL decides with ``consultations_provider_no_overlap``; nothing to do there.
    SQLite has no exclusion constraints, but MedEase opens its transactions with BEGIN
    IMMEDIATE (one writer at a time), so this check inside the caller's transaction cannot
    race with another write there.
    """
    if connection.vendor == "postgresql":
        return
    clash = Consultation.objects.filter(
        provider_id=provider_id,
        status__in=ACTIVE_STATUSES,
        scheduled_start__lt=end,
        scheduled_end__gt=start,
    )
    if exclude_id is not None:
        clash = clash.exclude(pk=exclude_id)
    if clash.exists():
        raise IntegrityError(OVERLAP_CONSTRAINT)


def _lock_provider(provider: User) -> User:
    """Serialize availability edits and slot materialization of one provider; returns a fresh
    copy (timezone, consultation length) read under the lock."""
    return (
        User.objects.select_for_update(of=("self",))
        .select_related("provider_profile")
        .get(pk=provider.pk)
    )


def _invalidate_for(consultation: Consultation, *, slots: bool = True) -> None:
    caching.invalidate_on_commit(
        provider_ids=[consultation.provider_id],
        user_ids=[consultation.patient_id],
        organization_ids=[consultation.organization_id],
        slots=slots,
    )
