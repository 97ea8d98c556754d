"""Every write of the clinic core. Each public function owns its transaction.

Concurrency is decided by the database (see consultations/models.py for the constraints):
a booking is an INSERT that the partial unique index (and, on PostgreSQL, the exclusion
constraint) accepts or refuses; a transition is a conditional UPDATE that must change exactly
one row; call-next claims the queue head with ``SELECT ... FOR UPDATE SKIP LOCKED``.
Notifications are written by ``consultations.notifications`` inside the same transaction
(outbox); cache invalidation runs after commit.

``from consultations import services; services.consultation_book(...)`` is the way in; the
modules below are how it is organized.
"""

from consultations.services.availability import (
    ExceptionSpec,
    MaterializeResult,
    availability_replace,
    availability_validate,
    slots_materialize,
    slots_materialize_all,
)
from consultations.services.booking import consultation_book
from consultations.services.checkin import consultation_check_in, consultation_check_in_undo
from consultations.services.queue import (
    queue_call_next,
    queue_expire_stale,
    queue_head_for_update,
    queue_join,
    queue_leave,
    queue_remove,
)
from consultations.services.records import medical_record_add
from consultations.services.transitions import (
    consultation_cancel,
    consultation_complete,
    consultation_mark_no_show,
    consultation_mark_visit_no_show,
    consultation_reschedule,
    consultation_start,
    consultation_transition,
    consultations_mark_overdue_no_shows,
)

__all__ = [
    "ExceptionSpec",
    "MaterializeResult",
    "availability_replace",
    "availability_validate",
    "consultation_book",
    "consultation_cancel",
    "consultation_check_in",
    "consultation_check_in_undo",
    "consultation_complete",
    "consultation_mark_no_show",
    "consultation_mark_visit_no_show",
    "consultation_reschedule",
    "consultation_start",
    "consultation_transition",
    "consultations_mark_overdue_no_shows",
    "medical_record_add",
    "queue_call_next",
    "queue_expire_stale",
    "queue_head_for_update",
    "queue_join",
    "queue_leave",
    "queue_remove",
    "slots_materialize",
    "slots_materialize_all",
]
