"""The visit page's sign-in, session grant and join links (no browser: Django's client).

The page's session opens the page and its own API endpoints (CSRF enforced), never the
console and never another visit; a join link opens one visit for one user, expires,
refuses tampering and never bypasses a clinician's second factor. Opening the page and
following a link write audit events.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import signing
from django.test import Client
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services as account_services
from accounts.models import Role
from consultations import notifications
from medease.models import AuditEvent
from tests.conftest import PASSWORD
from tests.messaging.conftest import make_consultation
from visits import links

JSON = "application/json"
pytestmark = [pytest.mark.django_db, pytest.mark.postgres, pytest.mark.redis]


def page(consultation) -> str:
    return f"/visit/{consultation.pk}/"


def sign_in(user, *, next_url: str | None = None) -> tuple[Client, object]:
    client = Client(enforce_csrf_checks=True)
    form = client.get("/visit/sign-in/" + (f"?next={next_url}" if next_url else ""))
    token = form.cookies["csrftoken"].value
    response = client.post(
        "/visit/sign-in/",
        {"email": user.email, "password": PASSWORD, "csrfmiddlewaretoken": token},
    )
    return client, response


def csrf_headers(client: Client) -> dict:
    return {"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value, "content_type": JSON}


def open_link(url: str) -> tuple[Client, object]:
    client = Client(enforce_csrf_checks=True)
    return client, client.get(url.removeprefix("http://127.0.0.1:8000"))


@pytest.fixture
def visit(chat):
    return chat


@pytest.fixture
def other_visit(chat):
    """Another visit of the same patient, with the same provider."""
    return make_consultation(patient=chat.patient, provider=chat.provider, hours=3)


# --- Sign-in and the page ------------------------------------------------------------------


def test_a_patient_signs_in_and_the_page_is_audited(visit):
    client, response = sign_in(visit.patient, next_url=page(visit.consultation))
    assert response.status_code == 302
    assert response["Location"] == page(visit.consultation)
    last = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    answer = client.get(page(visit.consultation))
    assert answer.status_code == 200
    assert b'id="visit-config"' in answer.content
    assert answer["Cache-Control"].startswith("max-age=0")
    events = list(AuditEvent.objects.filter(id__gt=last))
    assert [(e.action, e.object_type, e.object_id) for e in events] == [
        ("read", "consultation", str(visit.consultation.pk))
    ]
    assert events[0].user_id == visit.patient.pk
    assert events[0].patient_id == visit.patient.pk


def test_wrong_password_is_refused_and_counted(visit):
    client = Client()
    response = client.post(
        "/visit/sign-in/", {"email": visit.patient.email, "password": "not-the-password"}
    )
    assert response.status_code == 400
    assert b"Email or password is incorrect." in response.content
    assert client.get(page(visit.consultation)).status_code == 302  # still not signed in


def test_without_a_session_the_page_sends_to_sign_in(visit):
    response = Client().get(page(visit.consultation))
    assert response.status_code == 302
    assert response["Location"] == f"/visit/sign-in/?next={page(visit.consultation)}"


def test_the_page_is_404_for_an_outsider(visit, outsiders):
    client, response = sign_in(outsiders["patient"])
    assert response.status_code == 302
    assert client.get(page(visit.consultation)).status_code == 404
    provider_client, _ = sign_in(outsiders["provider"])
    assert provider_client.get(page(visit.consultation)).status_code == 404


def test_the_page_is_404_for_staff_and_staff_cannot_sign_in_here(visit):
    console = Client()
    console.force_login(visit.staff)  # the clinic's own staff, signed in to the console
    assert console.get(page(visit.consultation)).status_code == 404
    client, response = sign_in(visit.staff)
    assert response.status_code == 403
    assert b"staff console" in response.content
    assert client.get(page(visit.consultation)).status_code == 302


def test_the_page_session_does_not_open_the_console_or_other_endpoints(visit):
    client, _ = sign_in(visit.provider)
    assert client.get("/admin/").status_code == 302  # the console's sign-in
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/consultations").status_code == 401


def test_the_page_calls_its_endpoints_with_the_session_and_csrf(visit):
    client, _ = sign_in(visit.patient)
    call = f"/api/v1/consultations/{visit.consultation.pk}/call"
    refused = client.post(call, content_type=JSON)
    assert refused.status_code == 403, refused.content  # no CSRF token
    joined = client.post(call, **csrf_headers(client))
    assert joined.status_code == 200, joined.content
    assert joined.json()["call"]["status"] == "waiting"
    messages = client.get(f"/api/v1/consultations/{visit.consultation.pk}/messages")
    assert messages.status_code == 200
    ticket = client.post("/api/v1/ws-ticket", **csrf_headers(client))
    assert ticket.status_code == 200 and ticket.json()["ticket"]
    # Sending over REST is not the page's way (it uses the socket): not opened to the session.
    send = client.post(
        f"/api/v1/consultations/{visit.consultation.pk}/read",
        {"message_id": 1},
        **csrf_headers(client),
    )
    assert send.status_code == 401


def test_a_password_change_ends_the_page_session(visit):
    client, _ = sign_in(visit.patient)
    assert client.get(page(visit.consultation)).status_code == 200
    account_services.user_set_password(user=visit.patient, password="another-long-password-1")
    assert client.get(page(visit.consultation)).status_code == 302


def test_a_clinician_with_mfa_signs_in_with_the_code(visit):
    device = TOTPDevice.objects.create(user=visit.provider, name="App", confirmed=True)
    client, response = sign_in(visit.provider, next_url=page(visit.consultation))
    assert response.status_code == 302
    assert response["Location"] == "/visit/sign-in/code/"
    assert client.get(page(visit.consultation)).status_code == 302  # not yet
    token = client.cookies["csrftoken"].value
    # (Wrong codes and their back-off are accounts.mfa's, tested in tests/accounts/.)
    code = f"{totp(device.bin_key, step=30, t0=0, digits=6, drift=0):06d}"
    right = client.post("/visit/sign-in/code/", {"code": code, "csrfmiddlewaretoken": token})
    assert right.status_code == 302
    assert right["Location"] == page(visit.consultation)
    assert client.get(page(visit.consultation)).status_code == 200


# --- Join links ----------------------------------------------------------------------------


def test_a_join_link_opens_that_visit_only_and_is_audited(visit, other_visit):
    url = links.join_url(consultation=visit.consultation, user=visit.patient)
    last = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    client, response = open_link(url)
    assert response.status_code == 302
    assert response["Location"] == page(visit.consultation)
    event = AuditEvent.objects.get(id__gt=last)
    assert (event.action, event.object_type, event.user_id) == (
        "create",
        "visit_link",
        visit.patient.pk,
    )
    assert client.get(page(visit.consultation)).status_code == 200
    # The same patient's other visit is not opened by this link.
    assert client.get(page(other_visit)).status_code == 404
    other_call = f"/api/v1/consultations/{other_visit.pk}/call"
    assert client.post(other_call, **csrf_headers(client)).status_code == 401
    assert client.get(f"/api/v1/consultations/{other_visit.pk}/messages").status_code == 401
    own_call = f"/api/v1/consultations/{visit.consultation.pk}/call"
    assert client.post(own_call, **csrf_headers(client)).status_code == 200
    # Nor the console.
    assert client.get("/admin/").status_code == 302


def test_a_link_is_for_its_user_only(visit):
    """The provider's link is refused once tampered to name the patient."""
    token = links.join_token(consultation=visit.consultation, user=visit.provider)
    payload = signing.loads(token, salt=links.SALT)
    payload["u"] = visit.patient.pk
    forged = signing.dumps(payload, salt="another-purpose", compress=True)
    _client, response = open_link(f"/visit/join/{forged}/")
    assert response.status_code == 403
    assert b"does not work" in response.content


def test_a_tampered_link_is_refused(visit):
    url = links.join_url(consultation=visit.consultation, user=visit.patient)
    token = url.rstrip("/").rsplit("/", 1)[1]
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    client, response = open_link(f"/visit/join/{flipped}/")
    assert response.status_code == 403
    assert client.get(page(visit.consultation)).status_code == 302


def test_an_expired_link_is_refused(visit, settings):
    settings.VISIT_LINK_SECONDS = 60
    ended = timezone.now() - timedelta(minutes=5)
    visit.consultation.scheduled_start = ended - timedelta(minutes=30)
    visit.consultation.scheduled_end = ended
    url = links.join_url(consultation=visit.consultation, user=visit.patient)
    _client, response = open_link(url)
    assert response.status_code == 403


def test_a_link_dies_with_a_password_change(visit):
    url = links.join_url(consultation=visit.consultation, user=visit.patient)
    account_services.user_set_password(user=visit.patient, password="another-long-password-1")
    _client, response = open_link(url)
    assert response.status_code == 403


def test_a_link_never_bypasses_a_clinicians_second_factor(visit):
    TOTPDevice.objects.create(user=visit.provider, name="App", confirmed=True)
    url = links.join_url(consultation=visit.consultation, user=visit.provider)
    client, response = open_link(url)
    assert response.status_code == 302
    assert response["Location"] == f"/visit/sign-in/?next={page(visit.consultation)}"
    assert client.get(page(visit.consultation)).status_code == 302


def test_a_link_for_a_visit_the_user_is_not_in_is_404(visit, outsiders):
    url = links.join_url(consultation=visit.consultation, user=outsiders["patient"])
    _client, response = open_link(url)
    assert response.status_code == 404


# --- The reminder e-mail carries the link ---------------------------------------------------


def test_the_reminder_email_carries_a_working_join_link(make_user, organization, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    patient = make_user(Role.PATIENT)
    provider = make_user(Role.PROVIDER, organization=organization)
    consultation = make_consultation(patient=patient, provider=provider, hours=20)
    # Booked well before the 24 h reminder's lead time.
    type(consultation).objects.filter(pk=consultation.pk).update(
        created_at=timezone.now() - timedelta(days=3)
    )
    assert notifications.reminders_create_due() == 1
    from workers.models import Notification

    reminder = Notification.objects.get(consultation_id=consultation.pk, kind="reminder_24h")
    join_url = reminder.payload["join_url"]
    assert join_url.startswith(settings.SITE_URL + "/visit/join/")
    from workers.channels import channel_for

    message = channel_for("email").render(notification=reminder)
    assert join_url in message.text
    assert re.search(re.escape(join_url.replace("&", "&amp;")), message.html)
    _client, response = open_link(join_url.removeprefix(settings.SITE_URL))
    assert response["Location"] == page(consultation)


# --- The demo -------------------------------------------------------------------------------


def test_the_demo_leaves_patient1_a_visit_with_provider1_to_join_today(settings):
    from io import StringIO

    from django.core.management import call_command

    from accounts.demo import DEMO_PASSWORD
    from consultations.models import Consultation

    settings.DEBUG = True  # seed_demo refuses to run with DEBUG off
    call_command("seed_demo", stdout=StringIO())
    call_command("seed_demo", stdout=StringIO())  # again: still one
    visits = Consultation.objects.filter(
        patient__email__startswith="patient1@",
        provider__email__startswith="provider1@",
        status="scheduled",
        scheduled_end__gt=timezone.now(),
    )
    assert visits.count() == 1
    visit = visits.get()
    clients = {}
    for who in (visit.patient, visit.provider):
        client = Client(enforce_csrf_checks=True)
        client.get("/visit/sign-in/")
        response = client.post(
            f"/visit/sign-in/?next={page(visit)}",
            {
                "email": who.email,
                "password": DEMO_PASSWORD,
                "csrfmiddlewaretoken": client.cookies["csrftoken"].value,
            },
        )
        assert response.status_code == 302, response.content
        assert client.get(page(visit)).status_code == 200
        clients[who.pk] = client
    call = f"/api/v1/consultations/{visit.pk}/call"
    for client in clients.values():
        joined = client.post(call, **csrf_headers(client))
        assert joined.status_code == 200, joined.content
    assert joined.json()["call"]["status"] == "active"
