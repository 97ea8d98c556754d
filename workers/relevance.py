"""Which notifications are still worth sending: checks that domain apps plug in per kind.

The outbox knows no consultation or chat. A domain app whose notifications can go stale
(a reminder for a visit that was cancelled meanwhile) registers a check for those kinds
from its ``AppConfig.ready()``; delivery asks it just before claiming the row, and a row
with a reason is recorded as ``skipped`` instead of being sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from workers.models import Notification

# Given the row and the time of the attempt: why it should not be sent, or None to send it.
RelevanceCheck = Callable[[Notification, datetime], str | None]

_checks: dict[str, list[RelevanceCheck]] = {}


def register_relevance_check(*, kinds: Iterable[str], check: RelevanceCheck) -> None:
    """Ask ``check`` before delivering any notification of ``kinds`` (idempotent)."""
    for kind in kinds:
        registered = _checks.setdefault(str(kind), [])
        if check not in registered:
            registered.append(check)


def unregister_relevance_check(*, kinds: Iterable[str], check: RelevanceCheck) -> None:
    """Stop asking ``check`` for ``kinds`` (for tests that plug in a check of their own)."""
    for kind in kinds:
        registered = _checks.get(str(kind), [])
        if check in registered:
            registered.remove(check)


def checks_for(kind: str) -> tuple[RelevanceCheck, ...]:
    """The checks registered for ``kind``, in registration order."""
    return tuple(_checks.get(str(kind), ()))


def reason_not_to_send(notification: Notification, *, now: datetime) -> str | None:
    """Why ``notification`` should no longer be sent, or None if it should."""
    if notification.expires_at is not None and now >= notification.expires_at:
        return "expired before it could be delivered"
    for check in checks_for(notification.kind):
        reason = check(notification, now)
        if reason is not None:
            return reason
    return None
