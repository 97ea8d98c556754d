"""Writing the PHI audit log. Views call these after reading or writing patient data.

Where an event goes (docs/adr/0007-audit-write-path.md): inside a transaction it joins
that transaction (one INSERT, committed or rolled back with what it records); otherwise,
with ``AUDIT_WRITE_PATH="stream"``, one XADD to the durable Redis Stream that
``manage.py audit_flush`` drains into the table; with ``"sync"``, or when Redis fails,
one INSERT in autocommit as before. Either way the call returns only once the event is
durable, so it is never lost once the response is sent.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Iterable

import redis
from django.conf import settings
from django.db import router, transaction
from django.utils import timezone

from medease import audit_stream
from medease.context import current_request_id
from medease.models import AuditAction, AuditEvent
from medease.ratelimit import client_ip

__all__ = ["AuditAction", "audit_log", "audit_log_rows", "audit_log_typed_rows", "audit_origin"]

logger = logging.getLogger("medease.audit")

# (object id, patient id, organization id) of one audited object.
AuditRow = tuple[object, int | None, int | None]
# (object type, object id, patient id, organization id).
TypedAuditRow = tuple[str, object, int | None, int | None]


def _ip_or_none(request) -> str | None:
    if request is None:
        return None
    try:
        return str(ipaddress.ip_address(client_ip(request)))
    except ValueError:
        return None


def audit_origin(request) -> tuple[int | None, str | None, str]:
    """Who asked, from where, in which request: ``(user_id, ip, request_id)`` of the events
    written for ``request`` (also by a statement that writes its own event in SQL)."""
    user = getattr(request, "user", None)
    user_id = user.pk if user is not None and user.is_authenticated else None
    request_id = current_request_id()
    return user_id, _ip_or_none(request), request_id if request_id != "-" else ""


def audit_log_rows(*, request, action: str, object_type: str, rows: Iterable[AuditRow]) -> None:
    """Append one event per row, each with its own patient and clinic, in one write.

    Lists that span several patients use this directly so they stay constant-query.
    """
    audit_log_typed_rows(
        request=request,
        action=action,
        rows=[(object_type, *row) for row in rows],
    )


def audit_log_typed_rows(*, request, action: str, rows: Iterable[TypedAuditRow]) -> None:
    """Like ``audit_log_rows`` with an object type per row (a page of mixed objects), in one
    write."""
    user_id, ip, request_id = audit_origin(request)
    now = timezone.now()
    # Plain column values, not model instances: the stream path never needs a model (a
    # list page's 20 instances were a noticeable share of its CPU); the event_id is set
    # here so that a synchronous fallback writes the same events the stream may hold.
    events = [
        {
            "event_id": uuid.uuid4(),
            "created_at": now,
            "user_id": user_id,
            "ip": ip,
            "action": action,
            "object_type": object_type,
            "object_id": str(object_id),
            "patient_id": patient_id,
            "organization_id": organization_id,
            "request_id": request_id,
        }
        for object_type, object_id, patient_id, organization_id in rows
    ]
    if events:
        _events_write(events)


def _events_write(events: list[dict]) -> None:
    using = router.db_for_write(AuditEvent)
    if (
        settings.AUDIT_WRITE_PATH == "stream"
        and not transaction.get_connection(using).in_atomic_block
    ):
        try:
            audit_stream.stream_append_values(events)
            return
        except redis.RedisError as exc:
            logger.warning("audit stream unavailable, writing synchronously: %s", exc)
        # A timeout may still have appended, and the flusher may insert first: the
        # event_id makes whichever copy comes second a no-op.
        AuditEvent.objects.using(using).bulk_create(
            [AuditEvent(**values) for values in events], ignore_conflicts=True
        )
        return
    AuditEvent.objects.using(using).bulk_create([AuditEvent(**values) for values in events])


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
