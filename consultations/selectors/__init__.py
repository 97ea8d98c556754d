"""Reads of the clinic core. Anything holding patient data takes the requesting user and is
scoped by it (the models' ``visible_to``), so a view cannot forget: another user's object is
``NotFound``. ``from consultations import selectors; selectors.<name>`` is the way in."""

from consultations.selectors.consultations import (
    consultation_get_for_user,
    consultation_row_get_for_user,
    consultation_rows_for_user,
    consultation_rows_page,
    consultations_for_user,
    unread_count_for,
    unread_counter_register,
    unread_counts_for,
)
from consultations.selectors.dashboard import (
    dashboard_consultations,
    dashboard_day,
    dashboard_for_user,
    dashboard_queue_for_patient,
    dashboard_upcoming_for_patient,
    queue_lengths,
)
from consultations.selectors.providers import (
    availability_exceptions,
    availability_windows,
    provider_get,
    provider_get_managed,
    provider_managed_by,
    provider_today_bounds,
    slots_open,
)
from consultations.selectors.queue import (
    queue_current_remaining_minutes,
    queue_entries_with_position,
    queue_entry_get_for_user,
    queue_typical_minutes,
    queue_wait_estimator,
    queue_wait_estimators,
    queue_waiting,
)
from consultations.selectors.records import patient_get_for_records, records_for_user

__all__ = [
    "availability_exceptions",
    "availability_windows",
    "consultation_get_for_user",
    "consultation_row_get_for_user",
    "consultation_rows_for_user",
    "consultation_rows_page",
    "consultations_for_user",
    "dashboard_consultations",
    "dashboard_day",
    "dashboard_for_user",
    "dashboard_queue_for_patient",
    "dashboard_upcoming_for_patient",
    "patient_get_for_records",
    "provider_get",
    "provider_get_managed",
    "provider_managed_by",
    "provider_today_bounds",
    "queue_current_remaining_minutes",
    "queue_entries_with_position",
    "queue_entry_get_for_user",
    "queue_lengths",
    "queue_typical_minutes",
    "queue_wait_estimator",
    "queue_wait_estimators",
    "queue_waiting",
    "records_for_user",
    "slots_open",
    "unread_count_for",
    "unread_counter_register",
    "unread_counts_for",
]
