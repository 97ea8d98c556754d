"""Who may do what in a consultation's chat.

Seeing the chat (history, a websocket) follows ``Consultation.objects.visible_to``: the
patient, the provider and the clinic's staff; anyone else gets NotFound / close 4403. Writing
to it (sending, typing) is for the two participants only, and only while the consultation is
open; org staff observe.
"""

from __future__ import annotations

from consultations import lifecycle

# A chat is writable while the consultation is active in the lifecycle table (scheduled or in
# progress); completed, cancelled and no-show consultations keep a read-only history.
OPEN_STATUSES = frozenset(lifecycle.ACTIVE_STATUSES)


def is_participant(*, user, consultation) -> bool:
    return user.pk in (consultation.patient_id, consultation.provider_id)


def is_open(status: str) -> bool:
    return lifecycle.is_active(status)
