"""Who may do what in a consultation's chat.

Seeing the chat (history, a websocket) follows ``consultation_get_for_user``: the patient,
the provider and the clinic's staff; anyone else gets NotFound / close 4403. Writing to it
(sending, typing) is for the two participants only, and only while the consultation is
open; org staff observe.
"""

from __future__ import annotations

from consultations.models import ConsultationStatus

# A chat is writable while the consultation is scheduled or in progress; completed,
# cancelled and no-show consultations keep a read-only history.
OPEN_STATUSES = frozenset({ConsultationStatus.SCHEDULED, ConsultationStatus.IN_PROGRESS})


def is_participant(*, user, consultation) -> bool:
    return user.pk in (consultation.patient_id, consultation.provider_id)


def is_open(status: str) -> bool:
    return status in OPEN_STATUSES
