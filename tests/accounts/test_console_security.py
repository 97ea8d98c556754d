"""The staff console under attack: login limits shared with the API, password guessing."""

from __future__ import annotations

import socket

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts import token_cache
from accounts.models import Role, User
from accounts.tokens import token_digest
from tests.conftest import PASSWORD
from tests.messaging import conftest as chat_fixtures
from tests.messaging.conftest import issue_ticket, ws_path

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-new-long-passphrase-42"

db = database_sync_to_async

# The chat's socket fixtures (the real ASGI application, Redis channel layer).
chat = chat_fixtures.chat
sockets = chat_fixtures.sockets
_fresh_chat_state = chat_fixtures._fresh_chat_state
notified = chat_fixtures.notified


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def console_user(make_user, organization):
    return make_user(Role.STAFF, organization=organization)


def console_login(email: str, password: str, ip: str = "10.0.0.1"):
    """Post the real admin login view; returns (response, client)."""
    client = Client(REMOTE_ADDR=ip)
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": email, "password": password, "next": "/admin/"},
    )
    return response, client


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def api_login(api, email: str, password: str, ip: str = "10.0.0.1"):
    return api.post(
        "/api/v1/auth/login",
        {"email": email, "password": password},
        format="json",
        REMOTE_ADDR=ip,
    )


def test_console_login_works(console_user):
    response, client = console_login(console_user.email, PASSWORD)
    assert response.status_code == 302
    assert logged_in(client)


def test_console_locks_the_account_after_ten_failures_even_for_the_right_password(console_user):
    for attempt in range(10):
        response, client = console_login(console_user.email, "wrong", ip=f"10.0.1.{attempt}")
        assert response.status_code == 200
        assert not logged_in(client)
    response, client = console_login(console_user.email, PASSWORD, ip="10.0.2.1")
    assert response.status_code == 200
    assert not logged_in(client)
    assert "Too many failed sign-in attempts" in response.content.decode()


def test_console_failures_lock_the_api_login(api, console_user):
    for _ in range(10):
        console_login(console_user.email.upper(), "wrong")
    response = api_login(api, console_user.email, PASSWORD, ip="10.9.9.9")
    assert response.status_code == 429
    assert int(response["Retry-After"]) in range(1, 15 * 60 + 1)


def test_api_failures_lock_the_console_login(api, console_user):
    for _ in range(10):
        assert api_login(api, console_user.email, "wrong").status_code == 401
    response, client = console_login(console_user.email, PASSWORD, ip="10.9.9.9")
    assert not logged_in(client)
    assert "Too many failed sign-in attempts" in response.content.decode()


def test_console_login_fails_closed_with_a_clear_message_when_redis_is_down(console_user, settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    response, client = console_login(console_user.email, PASSWORD)
    assert response.status_code == 200
    assert not logged_in(client)
    assert "temporarily unavailable" in response.content.decode()


def test_console_per_ip_limit_across_accounts(console_user, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login_ip": ("5/15m", False)}
    for n in range(5):
        console_login(f"nobody{n}@example.test", "wrong", ip="10.5.5.5")
    response, client = console_login(console_user.email, PASSWORD, ip="10.5.5.5")
    assert not logged_in(client)
    assert "Too many failed sign-in attempts" in response.content.decode()
    _response, client = console_login(console_user.email, PASSWORD, ip="10.5.5.6")
    assert logged_in(client)


def test_a_patients_right_password_on_the_console_is_not_counted(patient, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login_account": ("2/15m", False)}
    for _ in range(3):
        _response, client = console_login(patient.email, PASSWORD)
        assert not logged_in(client)  # not staff
    api = Client(REMOTE_ADDR="10.0.0.1")
    response = api.post(
        "/api/v1/auth/login",
        {"email": patient.email, "password": PASSWORD},
        content_type="application/json",
    )
    assert response.status_code == 200


# --- auth/password: guessing the current password ----------------------------------------


def change_password(client, old: str, new: str = NEW_PASSWORD):
    return client.post(
        "/api/v1/auth/password", {"old_password": old, "new_password": new}, format="json"
    )


def test_guessing_the_current_password_is_limited(auth_client, patient):
    client = auth_client(patient)
    for _ in range(10):
        assert change_password(client, "wrong").status_code == 400
    response = change_password(client, PASSWORD)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert int(response["Retry-After"]) in range(1, 15 * 60 + 1)
    patient.refresh_from_db()
    assert patient.check_password(PASSWORD)


def test_password_change_guesses_count_toward_the_login_lockout(api, auth_client, patient):
    client = auth_client(patient)
    for _ in range(10):
        change_password(client, "wrong")
    assert api_login(api, patient.email, PASSWORD, ip="10.9.9.9").status_code == 429


def test_a_right_password_change_is_not_counted(auth_client, patient, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login_account": ("1/15m", False)}
    assert change_password(auth_client(patient), PASSWORD).status_code == 204
    # Signed out by the change; sign in with the new password and change it back.
    api = APIClient()
    response = api_login(api, patient.email, NEW_PASSWORD)
    assert response.status_code == 200
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    assert change_password(api, NEW_PASSWORD, PASSWORD).status_code == 204


# --- Console credential writes end the user's sessions, sockets included -----------------


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser("root@example.test", PASSWORD)


def console(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def user_form(user, **changes) -> dict:
    """The console's change form of a staff member or admin (no inlines), as posted."""
    data = {
        "email": user.email,
        "full_name": user.full_name,
        "role": user.role,
        "organization": user.organization_id or "",
        "timezone": user.timezone,
        "is_active": "on" if user.is_active else "",
        **changes,
    }
    return {key: value for key, value in data.items() if value != ""}


async def open_socket(sockets, chat, user):
    ticket = await db(issue_ticket)(user)
    return await sockets(ws_path(chat.consultation.pk, ticket=ticket))


@pytest.mark.django_db(transaction=True)
async def test_a_password_set_in_the_console_closes_the_users_sockets(chat, sockets, superuser):
    patient_socket = await open_socket(sockets, chat, chat.patient)
    provider_socket = await open_socket(sockets, chat, chat.provider)

    def reset():
        return console(superuser).post(
            f"/admin/accounts/user/{chat.patient.pk}/password/",
            {"usable_password": "true", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
        )

    response = await db(reset)()
    assert response.status_code == 302
    assert await patient_socket.closed_with() == 4401
    assert await provider_socket.nothing()


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"is_active": ""}, id="deactivated"),
        pytest.param({"role": Role.PROVIDER}, id="role"),
        pytest.param({"organization": "other"}, id="clinic"),
    ],
)
@pytest.mark.django_db(transaction=True)
async def test_console_access_changes_close_the_users_sockets(
    chat, sockets, superuser, other_organization, changes
):
    staff_socket = await open_socket(sockets, chat, chat.staff)
    patient_socket = await open_socket(sockets, chat, chat.patient)
    if changes.get("organization") == "other":
        changes = {"organization": other_organization.pk}

    def edit():
        return console(superuser).post(
            f"/admin/accounts/user/{chat.staff.pk}/change/", user_form(chat.staff, **changes)
        )

    response = await db(edit)()
    assert response.status_code == 302, response.content
    assert await staff_socket.closed_with() == 4401
    assert await patient_socket.nothing()


@pytest.mark.django_db(transaction=True)
async def test_a_harmless_console_edit_keeps_the_sockets(chat, sockets, superuser):
    staff_socket = await open_socket(sockets, chat, chat.staff)

    def edit():
        return console(superuser).post(
            f"/admin/accounts/user/{chat.staff.pk}/change/",
            user_form(chat.staff, full_name="Renamed Staff"),
        )

    assert (await db(edit)()).status_code == 302
    assert await staff_socket.nothing()


@pytest.mark.parametrize("how", ["delete", "revoke"])
@pytest.mark.django_db(transaction=True)
async def test_ending_a_token_in_the_console_revokes_it_everywhere(chat, sockets, superuser, how):
    raw, token = await db(account_services.token_issue)(user=chat.patient)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert (await db(api.get)("/api/v1/me")).status_code == 200  # now cached
    patient_socket = await open_socket(sockets, chat, chat.patient)

    def end():
        client = console(superuser)
        if how == "delete":
            return client.post(f"/admin/accounts/authtoken/{token.pk}/delete/", {"post": "yes"})
        return client.post(
            "/admin/accounts/authtoken/",
            {"action": "revoke", "_selected_action": [token.pk], "index": 0},
        )

    response = await db(end)()
    assert response.status_code == 302
    assert token_cache.get(token_digest(raw)) is token_cache.REVOKED
    assert (await db(api.get)("/api/v1/me")).status_code == 401
    assert await patient_socket.closed_with() == 4401


@pytest.mark.django_db(transaction=True)
async def test_console_logout_closes_the_sockets_of_that_session(chat, sockets):
    def two_sessions():
        return console(chat.staff), console(chat.staff)

    leaving, staying = await db(two_sessions)()
    name = settings.SESSION_COOKIE_NAME
    origin = (b"origin", b"http://localhost:8000")
    path = ws_path(chat.consultation.pk)

    def cookie(client):
        return (b"cookie", f"{name}={client.cookies[name].value}".encode())

    leaving_socket = await sockets(path, [cookie(leaving), origin])
    staying_socket = await sockets(path, [cookie(staying), origin])
    ticket_socket = await open_socket(sockets, chat, chat.staff)

    response = await db(leaving.post)("/admin/logout/")
    assert response.status_code == 200
    assert await leaving_socket.closed_with() == 4401
    assert await staying_socket.nothing()
    assert await ticket_socket.nothing()


def own_password_change(client: Client, old: str):
    return client.post(
        "/admin/password_change/",
        {"old_password": old, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )


def test_guessing_ones_own_password_in_the_console_is_limited(api, console_user):
    client = console(console_user)
    for _ in range(10):
        assert own_password_change(client, "wrong").status_code == 200
    response = own_password_change(client, PASSWORD)
    assert response.status_code == 200
    assert "Too many failed sign-in attempts" in response.content.decode()
    console_user.refresh_from_db()
    assert console_user.check_password(PASSWORD)
    assert api_login(api, console_user.email, PASSWORD).status_code == 429


@pytest.mark.django_db(transaction=True)
async def test_changing_ones_own_password_in_the_console_closes_ones_sockets(chat, sockets):
    staff_socket = await open_socket(sockets, chat, chat.staff)
    patient_socket = await open_socket(sockets, chat, chat.patient)
    response = await db(lambda: own_password_change(console(chat.staff), PASSWORD))()
    assert response.status_code == 302
    assert await staff_socket.closed_with() == 4401
    assert await patient_socket.nothing()


@pytest.mark.django_db(transaction=True)
async def test_a_logout_racing_with_the_socket_opening_still_closes_it(chat, sockets, monkeypatch):
    from django.contrib.sessions.models import Session

    from messaging import middleware

    client = await db(console)(chat.staff)
    name = settings.SESSION_COOKIE_NAME
    key = client.cookies[name].value
    real_start = middleware._SessionWatch.start

    async def logout_lands_first(watch):
        # The cookie was accepted; the logout (and its close, sent to nobody) happens now.
        await db(client.post)("/admin/logout/")
        assert not await db(Session.objects.filter(session_key=key).exists)()
        await real_start(watch)

    monkeypatch.setattr(middleware._SessionWatch, "start", logout_lands_first)
    ws = await sockets(
        ws_path(chat.consultation.pk),
        [(b"cookie", f"{name}={key}".encode()), (b"origin", b"http://localhost:8000")],
        connect=False,
    )
    connected, code = await ws.communicator.connect(timeout=5)
    if connected:
        assert await ws.closed_with() == 4401
    else:
        assert code == 4401
