"""A console session opens chat sockets only once it passed the console's second factor."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.messaging.conftest import ws_path

db = database_sync_to_async
ORIGIN = (b"origin", b"http://localhost:8000")


def console_cookie(user, *, device=None) -> tuple[bytes, bytes]:
    """A console session of the user (password step only, or also the device's code)."""
    client = Client()
    client.force_login(user)
    if device is not None:
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
    name = settings.SESSION_COOKIE_NAME
    return (b"cookie", f"{name}={client.cookies[name].value}".encode())


@pytest.mark.django_db(transaction=True)
async def test_a_password_only_session_of_a_user_with_an_authenticator_is_refused(chat, sockets):
    device = await db(TOTPDevice.objects.create)(user=chat.staff, name="phone", confirmed=True)
    path = ws_path(chat.consultation.pk)

    refused = await sockets(path, [await db(console_cookie)(chat.staff), ORIGIN])
    assert await refused.closed_with() == 4401

    verified = await sockets(path, [await db(console_cookie)(chat.staff, device=device), ORIGIN])
    assert await verified.nothing()  # open, and quiet


@pytest.mark.django_db(transaction=True)
async def test_a_clinician_whose_clinic_requires_mfa_must_enrol_before_chatting(chat, sockets):
    organization = chat.staff.organization
    organization.mfa_required = True
    await db(organization.save)(update_fields=["mfa_required"])
    path = ws_path(chat.consultation.pk)

    socket = await sockets(path, [await db(console_cookie)(chat.staff), ORIGIN])
    assert await socket.closed_with() == 4401
