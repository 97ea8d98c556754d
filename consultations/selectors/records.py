"""Medical records: whose record a user may open and which entries they may read."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Role, User
from consultations.models import Consultation, MedicalRecordEntry
from medease.exceptions import NotFound


def patient_get_for_records(*, user: User, patient_id: int) -> User:
    """The patient whose record the user may open (themself, a treating provider, the
    clinic's staff), or NotFound."""
    patient = User.objects.filter(pk=patient_id, role=Role.PATIENT).first()
    if patient is None:
        raise NotFound("Patient not found.")
    if user.pk == patient.pk:
        return patient
    if Consultation.objects.treating(user).filter(patient_id=patient.pk).exists():
        return patient
    raise NotFound("Patient not found.")


def records_for_user(
    *, user: User, patient: User, kind: str | None = None, current_only: bool = False
) -> QuerySet[MedicalRecordEntry]:
    """The patient's entries this user may read (``MedicalRecordEntry.objects.visible_to``;
    call ``patient_get_for_records`` first)."""
    queryset = (
        MedicalRecordEntry.objects.visible_to(user)
        .filter(patient=patient)
        .select_related("author", "superseded_by")
    )
    if kind:
        queryset = queryset.filter(kind=kind)
    if current_only:
        queryset = queryset.filter(superseded_by__isnull=True)
    return queryset
