"""Audit of chat reads and writes (messages are PHI), one path for the REST API and the
websocket: one event per request, per socket connection, or per message stored."""

from __future__ import annotations

import contextlib

from medease import context
from medease.audit import AuditAction, audit_log, audit_origin
from messaging.selectors import HISTORY_AUDIT_TYPE

# What the audit log calls a message stored in a chat.
MESSAGE_AUDIT_TYPE = "message"


@contextlib.contextmanager
def _request_id_of(request):
    """A websocket has no HTTP request id: its events carry the connection's id instead."""
    connection_id = getattr(request, "request_id", None)
    if context.current_state() is not None or not connection_id:
        yield
        return
    token = context.begin(context.RequestState(request_id=connection_id, use_primary=True))
    try:
        yield
    finally:
        context.end(token)


def audit_chat_read(*, request, consultation) -> None:
    """One read event for the consultation's chat: a page of history, or a socket that
    streams it (the live messages and any replay; not one event per message)."""
    with _request_id_of(request):
        audit_log(
            request=request,
            action=AuditAction.READ,
            object_type=HISTORY_AUDIT_TYPE,
            object_ids=[consultation.pk],
            patient_id=consultation.patient_id,
            organization_id=consultation.organization_id,
        )


def audit_message_created(*, request, consultation, message) -> None:
    """One create event per message stored (a repeated client_id stores nothing: no event)."""
    with _request_id_of(request):
        audit_log(
            request=request,
            action=AuditAction.CREATE,
            object_type=MESSAGE_AUDIT_TYPE,
            object_ids=[message.pk],
            patient_id=consultation.patient_id,
            organization_id=consultation.organization_id,
        )


def message_created_origin(request) -> tuple[int | None, str | None, str]:
    """``audit_origin`` of a message's create event, for the send that writes the event in
    its own statement (messaging.services.message_send_at_once): same user, address and
    request (or socket connection) id as :func:`audit_message_created` records."""
    with _request_id_of(request):
        return audit_origin(request)
