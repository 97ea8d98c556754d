"""Audit of consultation reads and writes, including lists that span several patients."""

from __future__ import annotations

from collections.abc import Iterable

from medease.audit import audit_log, audit_log_rows
from medease.models import AuditAction

__all__ = ["AuditAction", "audit_consultations", "audit_log"]


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
