"""Fixtures for video visit tests: the chat's consultation, tokens and websockets
(tests/messaging/conftest.py, re-exported here), and a TURN configuration."""

from __future__ import annotations

import pytest

from tests.messaging.conftest import (  # noqa: F401  (fixtures, registered by import)
    _fast_password_hashing,
    _fresh_chat_state,
    chat,
    outsiders,
    sockets,
    token_client,
)

TURN_SECRET = "test-static-auth-secret"


@pytest.fixture
def turn(settings):
    """A TURN server configured (none is contacted by the API: it only signs credentials)."""
    settings.TURN_URLS = [
        "turn:turn.medease.test:3478?transport=udp",
        "turns:turn.medease.test:443",
    ]
    settings.TURN_SECRET = TURN_SECRET
    settings.TURN_TTL_SECONDS = 3600
    return settings
