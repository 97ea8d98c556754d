"""Writing the PHI audit log. Views call these after reading or writing patient data."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from medease.context import current_request_id
from medease.models import AuditAction, AuditEvent
from medease.ratelimit import client_ip

__all__ = ["AuditAction", "audit_log", "audit_log_rows"]

# (object id, patient id, organization id) of one audited object.
AuditRow = tuple[object, int | None, int | None]


def _ip_or_none(request) -> str | None:
    if request is None:
        return None
    try:
        return str(ipaddress.ip_address(client_ip(request)))
    except ValueError:
        return None


def audit_log_rows(*, request, action: str, object_type: str, rows: Iterable[AuditRow]) -> None:
    """Append one event per row, each with its own patient and clinic, in one INSERT.

    Lists that span several patients use this directly so they stay constant-query.
    """
    user = getattr(request, "user", None)
    user_id = user.pk if user is not None and user.is_authenticated else None
    ip = _ip_or_none(request)
    request_id = current_request_id()
    events = [
        AuditEvent(
            user_id=user_id,
            ip=ip,
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            patient_id=patient_id,
            organization_id=organization_id,
            request_id=request_id if request_id != "-" else "",
        )
        for object_id, patient_id, organization_id in rows
    ]
    if events:
        AuditEvent.objects.bulk_create(events)


def audit_log(
    *,
    request,
    action: str,
    object_type: str,
    object_ids: list[object],
    patient_id: int | None = None,
    organization_id: int | None = None,
) -> None:
    """Append one event per object of a single patient (one INSERT whatever the count)."""
    audit_log_rows(
        request=request,
        action=action,
        object_type=object_type,
        rows=[(object_id, patient_id, organization_id) for object_id in object_ids],
    )
