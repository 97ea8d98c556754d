"""Role rules of the clinic-core API that are not about one object.

Object visibility (another user's object is 404) is the models' ``visible_to`` (used by the
selectors, the websocket and the console), and which role may take which consultation action
is the table in ``consultations.lifecycle``; this module only says which roles may start an
action that has no object yet (403 for the others).
"""

from __future__ import annotations

from accounts.models import Role, User
from medease.exceptions import Forbidden


def require_patient(user: User, *, action: str) -> None:
    """Only patients book consultations and join walk-in queues."""
    if user.role != Role.PATIENT:
        raise Forbidden(f"Only patients may {action}.")
