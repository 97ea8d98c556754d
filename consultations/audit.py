"""Audit of consultation reads and writes, including lists that span several patients."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models

from medease import audit as medease_audit
from medease.audit import audit_log, audit_log_rows
from medease.models import AuditAction

__all__ = [
    "AuditAction",
    "audit_consultations",
    "audit_log",
    "audit_objects",
    "audit_queue_entries",
    "audit_typed_rows",
]

# The audit log's name for each clinic model that holds patient data.
OBJECT_TYPES = {
    "consultation": "consultation",
    "queueentry": "queue_entry",
    "medicalrecordentry": "medical_record_entry",
}


def audit_consultations(*, request, action: str, consultations: Iterable[dict | object]) -> None:
    """One event per consultation, attributed to its own patient and clinic (one INSERT).

    Accepts model instances or serialized dicts (``{"id", "patient", "organization"}``).
    """
    rows = [
        (item["id"], item["patient"], item["organization"])
        if isinstance(item, dict)
        else (item.pk, item.patient_id, item.organization_id)
        for item in consultations
    ]
    audit_log_rows(request=request, action=action, object_type="consultation", rows=rows)


def audit_queue_entries(*, request, action: str, entries: Iterable[object]) -> None:
    """One event per walk-in queue entry (its reason is PHI), in one INSERT."""
    rows = [(entry.pk, entry.patient_id, entry.organization_id) for entry in entries]
    audit_log_rows(request=request, action=action, object_type="queue_entry", rows=rows)


def audit_typed_rows(
    *, request, action: str, rows: Iterable[tuple[str, object, int | None, int | None]]
) -> None:
    """One event per ``(object type, object id, patient id, organization id)``, of mixed
    types, in one write (a page showing consultations and queue entries side by side)."""
    medease_audit.audit_log_typed_rows(request=request, action=action, rows=rows)


def audit_objects(*, request, action: str, objects: Iterable[models.Model]) -> None:
    """One event per object of the clinic models (each with its own type, patient and
    clinic), in one INSERT."""
    audit_typed_rows(
        request=request,
        action=action,
        rows=[
            (OBJECT_TYPES[obj._meta.model_name], obj.pk, obj.patient_id, obj.organization_id)
            for obj in objects
        ],
    )
