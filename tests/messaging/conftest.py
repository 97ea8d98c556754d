"""Fixtures for chat tests: a consultation with its two participants, tickets, websocket
communicators on the real ASGI application, and a recorder for offline notifications."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import Role
from consultations.models import Consultation, ConsultationStatus
from messaging import events, presence, services
from messaging import notifications as chat_notifications

# The chat's own function, before the autouse fixture below replaces it with a recorder.
REAL_NOTIFY_UNREAD = chat_notifications.notify_unread_messages

# Generous: two slow cores, a database thread shared by every consumer.
TIMEOUT = 5


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_chat_state():
    """No presence entries or channel-layer groups left over from earlier tests or runs."""
    presence._backend = None
    if settings.REDIS_URL:
        from django_redis import get_redis_connection

        client = get_redis_connection("default")
        for key in client.scan_iter(match="medease:presence:*"):
            client.delete(key)
    layer = get_channel_layer()
    if hasattr(layer, "flush"):
        with contextlib.suppress(Exception):
            async_to_sync(layer.flush)()
    yield


@pytest.fixture(autouse=True)
def notified(monkeypatch):
    """Calls of the chat's notify_unread_messages, as (user id, consultation id)."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(
        services.notifications,
        "notify_unread_messages",
        lambda *, user, consultation: calls.append((user.pk, consultation.pk)),
    )
    return calls


def make_consultation(*, patient, provider, status=ConsultationStatus.SCHEDULED, hours=1):
    start = (timezone.now() + timedelta(hours=hours)).replace(microsecond=0)
    consultation = Consultation.objects.create(
        patient=patient,
        provider=provider,
        organization_id=provider.organization_id,
        scheduled_start=start,
        scheduled_end=start + timedelta(minutes=30),
        status=status,
    )
    # Loaded the way views and consumers load it (participants selected).
    return Consultation.objects.select_related("patient", "provider", "organization").get(
        pk=consultation.pk
    )


@dataclass
class Chat:
    patient: object
    provider: object
    staff: object
    consultation: Consultation


@pytest.fixture
def chat(make_user, organization):
    patient = make_user(Role.PATIENT)
    provider = make_user(Role.PROVIDER, organization=organization)
    staff = make_user(Role.STAFF, organization=organization)
    return Chat(patient, provider, staff, make_consultation(patient=patient, provider=provider))


@pytest.fixture
def outsiders(make_user, other_organization):
    """Users who must never see the chat: another patient, another clinic's provider/staff."""
    return {
        "patient": make_user(Role.PATIENT),
        "provider": make_user(Role.PROVIDER, organization=other_organization),
        "staff": make_user(Role.STAFF, organization=other_organization),
    }


@pytest.fixture
def token_client():
    """An APIClient with a freshly issued token (no password check: fast)."""

    def make(user) -> APIClient:
        raw, _token = account_services.token_issue(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        client.raw_token = raw
        return client

    return make


def issue_ticket(user) -> str:
    """A websocket ticket bound to a fresh token of the user (as POST ws-ticket does)."""
    _raw, token = account_services.token_issue(user=user)
    return services.ws_ticket_issue(user=user, token=token)


def ws_path(consultation_id: int, *, ticket: str | None = None, after: int | None = None) -> str:
    query = []
    if ticket is not None:
        query.append(f"ticket={ticket}")
    if after is not None:
        query.append(f"after={after}")
    return f"/ws/consultations/{consultation_id}/" + ("?" + "&".join(query) if query else "")


# No user has this id: a read event from it is a quiet marker (see Socket.nothing).
MARKER_USER = 0
# An event type the consumer does not know: it answers with an error (see Socket.settle).
SETTLE_FRAME = "test.settle"


def _is_marker(event: dict) -> bool:
    return event.get("type") == "read" and event.get("user") == MARKER_USER


class Socket:
    """A WebsocketCommunicator on the real application, with JSON helpers."""

    def __init__(self, path: str, headers: list | None = None) -> None:
        from config.asgi import application

        self.communicator = WebsocketCommunicator(application, path, headers=headers or [])
        match = re.match(r"/ws/consultations/(\d+)/", path)
        self.consultation_id = int(match.group(1)) if match else None
        self.held: deque[dict] = deque()  # events settle() read past

    async def connect(self) -> None:
        connected, _ = await self.communicator.connect(timeout=TIMEOUT)
        assert connected

    async def send(self, data: dict) -> None:
        await self.communicator.send_to(text_data=json.dumps(data))

    async def receive(self, timeout: float = TIMEOUT) -> dict:
        """The next event, skipping the quiet markers other sockets' :meth:`nothing` sent."""
        if self.held:
            return self.held.popleft()
        while True:
            event = json.loads(await self.communicator.receive_from(timeout=timeout))
            if not _is_marker(event):
                return event

    async def receive_type(self, kind: str, timeout: float = TIMEOUT) -> dict:
        """The next event of this type, skipping others (e.g. presence)."""
        while True:
            event = await self.receive(timeout=timeout)
            if event["type"] == kind:
                return event

    async def settle(self) -> None:
        """Return once the server has handled every frame sent on this socket so far.

        The consumer handles frames one at a time, so the answer to a frame it rejects comes
        after whatever the earlier frames did (their fan-out included) has been sent.
        """
        await self.send({"type": SETTLE_FRAME})
        held = []
        while True:
            event = await self.receive()
            if event["type"] == "error" and SETTLE_FRAME in event["message"]:
                break
            held.append(event)
        # What arrived meanwhile is still to be received (or to fail nothing()).
        self.held.extend(held)

    async def nothing(self, ignore: tuple = ("presence",)) -> bool:
        """True when nothing but ``ignore``d events reached this socket before a marker.

        The marker goes through the chat's fan-out to the consultation's group after the
        caller's actions, and a channel delivers in order: anything those actions sent to
        this socket arrives before it. A socket the server closed never gets the marker.
        """
        if any(event["type"] not in ignore for event in self.held):
            return False
        self.held.clear()
        token = uuid.uuid4().hex
        group = events.consultation_group(self.consultation_id)
        assert await events.agroup_send(
            group, {"type": "chat.read", "user": MARKER_USER, "message_id": token}
        )
        while True:
            output = await self.communicator.receive_output(timeout=TIMEOUT)
            if output["type"] != "websocket.send":
                return False  # closed by the server
            event = json.loads(output["text"])
            if _is_marker(event):
                if event["message_id"] == token:
                    return True
                continue  # another socket's marker
            if event["type"] not in ignore:
                return False

    async def closed_with(self, timeout: float = TIMEOUT) -> int | None:
        """Wait for the server to close; returns the close code (skips data frames)."""
        while True:
            output = await self.communicator.receive_output(timeout=timeout)
            if output["type"] == "websocket.close":
                return output.get("code")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.communicator.disconnect(timeout=TIMEOUT)


@pytest.fixture
async def sockets():
    """Opens Sockets and closes whatever a test left open."""
    opened: list[Socket] = []

    async def open_socket(path: str, headers: list | None = None, *, connect=True) -> Socket:
        socket = Socket(path, headers)
        opened.append(socket)
        if connect:
            await socket.connect()
        return socket

    yield open_socket
    for socket in opened:
        await socket.close()
