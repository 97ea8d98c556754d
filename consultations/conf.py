"""Settings of the clinic core, with their embedded defaults.

Read through these functions (not at import time) so tests can override them. The lead may
move them into config/settings.py as environment variables; the names stay the same.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings


def _setting(name: str, default):
    return getattr(settings, name, default)


def slots_horizon_days() -> int:
    """How many days ahead slots are kept materialized (today included)."""
    return int(_setting("SLOTS_MATERIALIZE_DAYS", 28))


def slots_cache_seconds() -> int:
    """Safety net on top of explicit invalidation (e.g. an invalidation lost in an outage)."""
    return int(_setting("SLOTS_CACHE_SECONDS", 60))


def slots_max_window() -> timedelta:
    return timedelta(days=int(_setting("SLOTS_MAX_WINDOW_DAYS", 31)))


def providers_cache_seconds() -> int:
    """Safety net on top of explicit invalidation of cached providers lists."""
    return int(_setting("PROVIDERS_CACHE_SECONDS", 300))


def dashboard_cache_seconds() -> int:
    return int(_setting("DASHBOARD_CACHE_SECONDS", 30))


def patient_cancel_cutoff() -> timedelta:
    """Patients may cancel or reschedule until this long before the scheduled start."""
    return timedelta(minutes=int(_setting("CONSULTATION_CANCEL_CUTOFF_MINUTES", 0)))


def no_show_grace() -> timedelta:
    """A scheduled consultation this long past its end without being started is a no-show."""
    return timedelta(minutes=int(_setting("CONSULTATION_NO_SHOW_GRACE_MINUTES", 15)))


def queue_stale_after() -> timedelta:
    """A walk-in entry still waiting after this long expires (the beat job)."""
    return timedelta(minutes=int(_setting("QUEUE_ENTRY_STALE_MINUTES", 240)))


def queue_history_size() -> int:
    """How many recent completed consultations the wait estimate takes the median of."""
    return int(_setting("QUEUE_WAIT_HISTORY", 20))


def queue_history_window() -> timedelta:
    return timedelta(days=int(_setting("QUEUE_WAIT_HISTORY_DAYS", 30)))
