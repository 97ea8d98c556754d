"""Notification outbox writes. Callers run these inside the transaction of the event that
causes the notification, so a rolled-back event notifies nobody.

(The background-work issue implements delivery; until then these record nothing.)
"""

from __future__ import annotations


def notify_consultation_event(*, consultation, kind: str) -> None:
    """Outbox rows for a consultation event.

    ``kind`` is one of ``booking_confirmed``, ``consultation_cancelled``,
    ``consultation_rescheduled``, ``no_show_marked``, ``consultation_started``.
    """


def notify_queue_called(*, entry) -> None:
    """Outbox row telling a walk-in patient they are next."""


def notify_unread_messages(*, user, consultation) -> None:
    """Outbox row for an offline participant with unread messages (one per idle period)."""
