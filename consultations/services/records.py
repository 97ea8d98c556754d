"""Medical records: append-only entries and their corrections."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from accounts.models import Role, User
from consultations import selectors
from consultations.models import MedicalRecordEntry, RecordKind
from medease.exceptions import Conflict, Forbidden, InvalidInput


def medical_record_add(
    *,
    author: User,
    patient: User,
    kind: str,
    text: str,
    consultation_id: int | None = None,
    supersedes_id: int | None = None,
) -> MedicalRecordEntry:
    """Append an entry to a patient's record (a treating provider or the clinic's staff).

    A correction names the entry it ``supersedes``; an entry is superseded at most once
    (one-to-one in the database, also for two corrections sent at once).
    """
    if author.role not in (Role.PROVIDER, Role.STAFF):
        raise Forbidden("Only providers and clinic staff write medical records.")
    if kind not in RecordKind.values:
        raise InvalidInput("Unknown kind.", fields={"kind": [f"One of {RecordKind.values}."]})
    if not text.strip():
        raise InvalidInput("The entry is empty.", fields={"text": ["This field is required."]})
    # Raises NotFound unless the author treats the patient (or their clinic does).
    selectors.patient_get_for_records(user=author, patient_id=patient.pk)
    consultation = None
    if consultation_id is not None:
        consultation = (
            selectors.consultations_for_user(user=author)
            .filter(pk=consultation_id, patient=patient)
            .first()
        )
        if consultation is None:
            raise InvalidInput(
                "Unknown consultation.",
                fields={"consultation": ["No such consultation of this patient."]},
            )
    supersedes = None
    if supersedes_id is not None:
        # Only an entry the author may read (their clinic's) can be corrected.
        supersedes = (
            MedicalRecordEntry.objects.visible_to(author)
            .filter(pk=supersedes_id, patient=patient)
            .first()
        )
        if supersedes is None:
            raise InvalidInput(
                "Unknown entry to supersede.",
                fields={"supersedes": ["No such entry in this patient's record."]},
            )
    try:
        with transaction.atomic():
            return MedicalRecordEntry.objects.create(
                patient=patient,
                author=author,
                organization_id=author.organization_id,
                consultation=consultation,
                kind=kind,
                text=text,
                supersedes=supersedes,
            )
    except IntegrityError as exc:
        raise Conflict(
            "That entry has already been corrected; correct the newer entry.",
            code="already_superseded",
        ) from exc
