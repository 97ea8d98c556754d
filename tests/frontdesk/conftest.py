"""Builders for the front desk's tests: the clinic core's builders (slots, bookings, other
clinics, API clients) and a console client signed in as the clinic's staff member."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.consultations.conftest import (  # noqa: F401 - fixtures shared with clinic core
    _fast_password_hashing,
    book,
    make_slot,
    other_provider,
    other_staff,
    token_client,
)


@pytest.fixture
def desk(staff) -> Client:
    """The console, signed in as the clinic's staff member."""
    client = Client()
    client.force_login(staff)
    return client
