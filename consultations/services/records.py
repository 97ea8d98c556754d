"""Medical records: append-only entries and their corrections."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from accounts.models import Role, User
from consultations import selectors
from consultations.models import MedicalRecordEntry, RecordKind
from medease.exceptions import Conflict, Forbidden, InvalidInput


@dataclass(frozen=True)
class RecordAttachments:
    """How record entries get their files. The attachments app sits above consultations
    and registers this at start-up (``AttachmentsConfig.ready``), so consultations never
    imports it.

    ``link(*, author, entry, attachment_ids)`` attaches files in the entry's transaction
    (400 on any it may not); ``outputs(*, request, entries)`` returns ``({entry id: [the
    attachment with signed URLs]}, [audit rows (type, id, patient, clinic) of the URLs]``)
    in one query whatever the number of entries.
    """

    link: Callable[..., object]
    outputs: Callable[..., tuple[dict[int, list[dict]], list[tuple]]]


_record_attachments: list[RecordAttachments] = []


def record_attachments_register(hooks: RecordAttachments) -> None:
    """Install the attachments app's hooks (once; a second call replaces them)."""
    _record_attachments[:] = [hooks]


def record_attachment_outputs(
    *, request, entries: Iterable[MedicalRecordEntry]
) -> tuple[dict[int, list[dict]], list[tuple]]:
    """The entries' attachments (with signed URLs) and the audit rows of those URLs."""
    if not _record_attachments:
        return {}, []
    return _record_attachments[0].outputs(request=request, entries=list(entries))


def medical_record_add(
    *,
    author: User,
    patient: User,
    kind: str,
    text: str,
    consultation_id: int | None = None,
    supersedes_id: int | None = None,
    attachment_ids: Sequence[int] = (),
) -> MedicalRecordEntry:
    """Append an entry to a patient's record (a treating provider or the clinic's staff).

    A correction names the entry it ``supersedes``; an entry is superseded at most once
    (one-to-one in the database, also for two corrections sent at once). ``attachment_ids``
    are the author's own ready files of this patient (``RecordAttachments.link``).
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
    if attachment_ids and not _record_attachments:
        raise InvalidInput(
            "Files cannot be attached here.", fields={"attachments": ["Not available."]}
        )
    try:
        with transaction.atomic():
            entry = MedicalRecordEntry.objects.create(
                patient=patient,
                author=author,
                organization_id=author.organization_id,
                consultation=consultation,
                kind=kind,
                text=text,
                supersedes=supersedes,
            )
            if attachment_ids:
                _record_attachments[0].link(
                    author=author, entry=entry, attachment_ids=attachment_ids
                )
            return entry
    except IntegrityError as exc:
        raise Conflict(
            "That entry has already been corrected; correct the newer entry.",
            code="already_superseded",
        ) from exc
