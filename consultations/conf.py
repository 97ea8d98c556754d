"""TEMPORARY (issue 9): the clinic core reads its settings from ``django.conf.settings``
(config/settings.py reads them from the environment). Only ``consultations/demo.py`` still
calls this; delete the module once it reads ``settings.SLOTS_MATERIALIZE_DAYS`` itself."""

from __future__ import annotations

from django.conf import settings


def slots_horizon_days() -> int:
    """How many days ahead slots are kept materialized (today included)."""
    return settings.SLOTS_MATERIALIZE_DAYS
