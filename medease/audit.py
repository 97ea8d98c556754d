"""Writing the PHI audit log. Views call :func:`audit_log` after reading or writing PHI."""

from __future__ import annotations

import ipaddress

from medease.context import current_request_id
from medease.models import AuditAction, AuditEvent
from medease.ratelimit import client_ip

__all__ = ["AuditAction", "audit_log"]


def _ip_or_none(request) -> str | None:
    if request is None:
        return None
    raw = client_ip(request)
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


def audit_log(
    *,
    request,
    action: str,
    object_type: str,
    object_ids: list[object],
    patient_id: int | None = None,
    organization_id: int | None = None,
) -> None:
    """Append one event per object (one INSERT whatever the count)."""
    user = getattr(request, "user", None)
    user_id = user.pk if user is not None and user.is_authenticated else None
    ip = _ip_or_none(request)
    request_id = current_request_id()
    AuditEvent.objects.bulk_create(
        [
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
            for object_id in object_ids
        ]
    )
