"""Audit completeness (issue 10, item 18): every route, console page and websocket path is
classified here as returning (or writing) PHI or not, and every PHI one is exercised as an
allowed user on real data and must write its audit events: exactly one audit INSERT per
request, its rows carrying the request's id and the caller; a chat socket writes one event
when it opens and none per message streamed to it.

A route, console model or websocket path missing from the tables fails
``test_every_route_console_page_and_socket_is_classified``: whoever adds one decides here
whether it shows patient data and, if so, proves it is audited.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import admin
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import Role
from consultations import services
from consultations.models import (
    Consultation,
    ConsultationStatus,
    MedicalRecordEntry,
    QueueEntry,
    Slot,
)
from medease.models import AuditEvent
from messaging import routing as chat_routing
from messaging import services as chat_services
from tests.messaging.conftest import issue_ticket, sockets, ws_path  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db

_HTTP_METHODS = ("get", "post", "put", "patch", "delete")
_KWARG = re.compile(r"<(?:\w+:)?(\w+)>")


@dataclass(frozen=True)
class Phi:
    """A PHI route: who calls it, how, and the events it must write."""

    actor: str
    action: str
    object_types: frozenset[str]
    body: object = None
    status: int = 200
    ids: dict = field(default_factory=dict)  # path parameter → world key (default: same name)
    browser: bool = False  # a console page: a signed-in session instead of a token
    http: str | None = None  # the method, for plain Django views ("*")
    setup: str | None = None  # a SETUPS entry to run first


def phi(actor, action, *types, body=None, status=200, browser=False, http=None, setup=None, **ids):
    return Phi(actor, action, frozenset(types), body, status, ids, browser, http, setup)


def page(actor, *types, **kwargs) -> Phi:
    """A console page that shows PHI: a GET by a signed-in clinician."""
    return phi(actor, "read", *types, browser=True, **kwargs)


# Not PHI: why, in a few words. Covered: PHI, proven audited by the named test.
NOT_PHI = "not_phi"
COVERED = "covered"

# Every URL outside the console's per-model pages (those are CONSOLE's, by model), by its
# name ("namespace:name" in a namespace; the route itself when unnamed):
# {method (or "*" for plain Django views): Phi | (NOT_PHI, why) | (COVERED, test)}
ROUTES: dict[str, dict[str, object]] = {
    "landing": {"*": (NOT_PHI, "static landing page")},
    "api-index": {"*": (NOT_PHI, "list of endpoints")},
    "schema": {"get": (NOT_PHI, "OpenAPI document")},
    "api-docs": {"get": (NOT_PHI, "Swagger UI")},
    "health-live": {"*": (NOT_PHI, "liveness")},
    "health-ready": {"*": (NOT_PHI, "readiness")},
    "metrics": {"*": (NOT_PHI, "counters")},
    "auth-register": {"post": (NOT_PHI, "creates an account; answers a token")},
    "auth-login": {"post": (NOT_PHI, "credentials in, token out")},
    "auth-login-mfa": {"post": (NOT_PHI, "second factor in, token out")},
    "auth-logout": {"post": (NOT_PHI, "204")},
    "auth-password": {"post": (NOT_PHI, "204")},
    "auth-mfa": {"get": (NOT_PHI, "the caller's MFA status")},
    "auth-mfa-totp": {"post": (NOT_PHI, "TOTP enrolment"), "delete": (NOT_PHI, "204")},
    "auth-mfa-totp-confirm": {"post": (NOT_PHI, "TOTP enrolment")},
    "auth-mfa-recovery": {"post": (NOT_PHI, "recovery codes")},
    "me": {
        "get": phi("patient", "read", "patient_profile"),
        "patch": phi("patient", "update", "patient_profile", body={"full_name": "Ann Other"}),
    },
    "notifications": {"get": (NOT_PHI, "delivery log: kind, channel, status, times")},
    "notification-preferences": {
        "get": (NOT_PHI, "muted kinds, quiet hours"),
        "put": (NOT_PHI, "muted kinds, quiet hours"),
        "patch": (NOT_PHI, "muted kinds, quiet hours"),
    },
    "providers": {"get": (NOT_PHI, "public provider directory")},
    "provider-slots": {"get": (NOT_PHI, "open slots, no patient")},
    "provider-availability": {
        "get": (NOT_PHI, "a provider's hours"),
        "put": (NOT_PHI, "a provider's hours"),
    },
    "provider-queue": {
        "get": phi("staff", "read", "queue_entry"),
        "post": phi("newcomer", "create", "queue_entry", body={"reason": "Fever"}, status=201),
    },
    "provider-queue-next": {"post": phi("provider", "create", "consultation", status=201)},
    "consultations": {
        "get": phi("staff", "read", "consultation"),
        "post": phi("patient", "create", "consultation", body="book", status=201),
    },
    "consultation-detail": {"get": phi("patient", "read", "consultation")},
    "consultation-cancel": {
        "post": phi("patient", "update", "consultation", body={"reason": "Feeling better"})
    },
    "consultation-start": {"post": phi("provider", "update", "consultation")},
    "consultation-complete": {
        "post": phi(
            "colleague",
            "update",
            "consultation",
            body={"provider_notes": "Rest"},
            consultation_id="in_progress",
        )
    },
    "consultation-no-show": {
        "post": phi("provider", "update", "consultation", consultation_id="past")
    },
    "consultation-reschedule": {
        "post": phi("patient", "update", "consultation", body="reschedule", status=201)
    },
    "queue-entry": {
        "get": phi("queued", "read", "queue_entry"),
        "delete": phi("queued", "update", "queue_entry", status=204),
    },
    "patient-records": {
        "get": phi("provider", "read", "medical_record_entry"),
        "post": phi(
            "provider",
            "create",
            "medical_record_entry",
            body={"kind": "note", "text": "BP 120/80"},
            status=201,
        ),
    },
    "dashboard": {"get": phi("patient", "read", "consultation", "queue_entry")},
    "consultation-messages": {
        "get": phi("patient", "read", "consultation.messages"),
        "post": phi(
            "patient",
            "create",
            "message",
            body={"body": "Still dizzy", "client_id": "c-1"},
            status=201,
        ),
    },
    "consultation-read": {"post": (NOT_PHI, "moves a read marker; 204")},
    "ws-ticket": {"post": (NOT_PHI, "a socket ticket")},
    "consultation-attachments": {
        "post": (NOT_PHI, "answers an upload target; content is audited when a URL is handed out")
    },
    "patient-attachments": {
        "post": (NOT_PHI, "answers an upload target; content is audited when a URL is handed out")
    },
    "attachment": {"get": phi("patient", "read", "attachment")},
    "attachment-complete": {
        "post": (COVERED, "tests/attachments/test_flow.py::test_the_whole_flow_keeps_the_bytes")
    },
    "attachments-file-upload": {"*": (NOT_PHI, "signed upload target; writes bytes, shows none")},
    "attachments-file-download": {
        "*": (COVERED, "signed URL: audited when handed out (attachment, attachment-complete)")
    },
    "consultation-call": {
        "get": phi("patient", "read", "call", setup="call"),
        "post": phi("patient", "create", "call"),
        "delete": (NOT_PHI, "leaves the call; 204"),
    },
    # The visit page (its own session, not a console login: covered by its own tests).
    "visit-page": {
        "*": (
            COVERED,
            "tests/visits/test_join_links.py::test_a_patient_signs_in_and_the_page_is_audited",
        )
    },
    "visit-join": {
        "*": (
            COVERED,
            "tests/visits/test_join_links.py::test_a_join_link_opens_that_visit_only_and_is_audited",
        )
    },
    "visit-sign-in": {"*": (NOT_PHI, "sign-in form")},
    "visit-sign-in-code": {"*": (NOT_PHI, "second-factor form")},
    "visit-sign-in-done": {"*": (NOT_PHI, "the signed-in user's own name")},
    "visit-sign-out": {"*": (NOT_PHI, "sign-out")},
    # The console's own pages (not a model's).
    "admin:index": {"*": (NOT_PHI, "the list of console sections")},
    "admin:login": {"*": (NOT_PHI, "sign-in form")},
    "admin:logout": {"*": (NOT_PHI, "sign-out")},
    "admin:password_change": {"*": (NOT_PHI, "own password form")},
    "admin:password_change_done": {"*": (NOT_PHI, "confirmation")},
    "admin:autocomplete": {"*": (NOT_PHI, "no autocomplete_fields point at patient data")},
    "admin:jsi18n": {"*": (NOT_PHI, "translations")},
    "admin:view_on_site": {"*": (NOT_PHI, "a redirect")},
    "admin:app_list": {"*": (NOT_PHI, "an app's model list")},
    "admin/(?P<url>.*)$": {"*": (NOT_PHI, "catch-all: 404 or login redirect")},
    "admin:auth_user_password_change": {"*": (NOT_PHI, "sets a user's password")},
    "admin:otp_totp_totpdevice_config": {"*": (NOT_PHI, "a second factor's setup")},
    "admin:otp_totp_totpdevice_qrcode": {"*": (NOT_PHI, "a second factor's setup")},
    "admin:accounts_mfa": {"*": (NOT_PHI, "own second factor")},
    "admin:accounts_mfa_setup": {"*": (NOT_PHI, "own second factor")},
    "admin:accounts_mfa_verify": {"*": (NOT_PHI, "own second factor")},
    "admin:consultations_today": {"*": page("staff", "consultation", "queue_entry")},
    "frontdesk:home": {"*": (NOT_PHI, "links")},
    "frontdesk:patients": {"*": page("staff", "patient_profile")},
    "frontdesk:patient": {
        "*": page(
            "staff",
            "patient_profile",
            "consultation",
            "queue_entry",
            "medical_record_entry",
        )
    },
    "frontdesk:patient_register": {
        "*": phi(
            "staff",
            "create",
            "patient_profile",
            browser=True,
            http="post",
            body={"full_name": "Walk In", "email": "walk.in@example.test"},
            status=302,
        )
    },
    "frontdesk:patient_invite_resend": {"*": (NOT_PHI, "re-sends an e-mail; redirects")},
    "frontdesk:book": {"*": page("staff", "patient_profile", body="desk_patient")},
    "frontdesk:reschedule": {"*": page("staff", "consultation")},
    "frontdesk:cancel": {"*": page("staff", "consultation", body="desk_cancel")},
    "frontdesk:board": {"*": page("staff", "consultation", "queue_entry")},
    "frontdesk:week": {"*": page("staff", "consultation")},
    "frontdesk:visit_action": {
        "*": phi(
            "staff",
            "update",
            "consultation",
            browser=True,
            http="post",
            status=302,
            consultation_id="today",
        )
    },
    "frontdesk:walk_ins": {"*": page("staff", "queue_entry", "consultation")},
    "frontdesk:call_next": {
        "*": phi("staff", "create", "consultation", browser=True, http="post", status=302)
    },
    "frontdesk:queue_remove": {"*": page("staff", "queue_entry")},
    "frontdesk:outbox": {"*": page("staff", "notification")},
    "frontdesk:set_password": {"*": (NOT_PHI, "the patient's own password form")},
}

# Console models: "phi" pages (changelist and change page) are checked below; others say why.
CONSOLE: dict[str, object] = {
    "auth.group": (NOT_PHI, "permission groups"),
    "otp_totp.totpdevice": (NOT_PHI, "clinicians' second factors"),
    "medease.auditevent": (NOT_PHI, "the audit trail itself: ids, no clinical content"),
    "accounts.organization": (NOT_PHI, "clinics"),
    "accounts.user": (COVERED, "tests/accounts/test_admin.py: a patient's page is audited"),
    "accounts.authtoken": (NOT_PHI, "sessions (superusers)"),
    "consultations.consultation": "phi",
    "consultations.queueentry": "phi",
    "consultations.medicalrecordentry": "phi",
    "workers.notification": (NOT_PHI, "delivery log: kind, channel, status"),
    "workers.notificationpreference": (NOT_PHI, "muted kinds, quiet hours"),
    "attachments.attachment": (NOT_PHI, "file metadata; content only through audited URLs"),
}

WEBSOCKETS = {"ws/consultations/<int:consultation_id>/": "phi"}

# Known gaps in files this change does not own: strict, so the fix turns them red here.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def _walk(patterns, prefix="", namespaces=()):
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            inner = (*namespaces, pattern.namespace) if pattern.namespace else namespaces
            yield from _walk(pattern.url_patterns, route, inner)
        else:
            key = ":".join((*namespaces, pattern.name)) if pattern.name else route
            yield route, key, pattern


_MODEL_PAGE = re.compile(r"^admin:(\w+?)_(\w+)_(changelist|add|history|delete|change)$")


def _is_model_page(route: str, key: str) -> bool:
    """A registered model's own console page (classified per model in CONSOLE)."""
    for model in admin.site._registry:
        opts = model._meta
        if key.startswith(f"admin:{opts.app_label}_{opts.model_name}_") and _MODEL_PAGE.match(key):
            return True
        if key == route and route.startswith(f"admin/{opts.app_label}/{opts.model_name}/"):
            return True  # the unnamed "<object_id>/" redirect to the change page
    return False


def _routes():
    """(route, key, methods) of every URL but the models' console pages (``*``: a plain
    Django view, any method)."""
    for route, key, pattern in _walk(get_resolver().url_patterns):
        if _is_model_page(route, key):
            continue
        view_class = getattr(pattern.callback, "view_class", None) or getattr(
            pattern.callback, "cls", None
        )
        if view_class is None:
            yield route, key, {"*"}
        else:
            yield route, key, {m for m in _HTTP_METHODS if hasattr(view_class, m)}


def _phi_cases():
    """One case per PHI route and method in the URLconf (a classified route that is gone
    has nothing left to audit; a new one fails the classification test)."""
    present = {key for _, key, _ in _routes()}
    cases = []
    for key, methods in ROUTES.items():
        for method, spec in methods.items():
            if isinstance(spec, Phi) and key in present:
                marks = []
                if (key, method) in KNOWN_GAPS:
                    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[(key, method)])]
                cases.append(pytest.param(key, method, spec, id=f"{key}-{method}", marks=marks))
    return cases


def test_every_route_console_page_and_socket_is_classified():
    routes = list(_routes())
    assert len(routes) > 30, "the URLconf walk found too little: the walker is broken"
    problems = []
    for route, key, methods in routes:
        if key not in ROUTES:
            problems.append(f"route {route} ({key}) is not classified in ROUTES")
        elif set(ROUTES[key]) != methods:
            problems.append(f"{key} implements {sorted(methods)}, ROUTES has {sorted(ROUTES[key])}")
    registered = {model._meta.label_lower for model in admin.site._registry}
    assert "consultations.consultation" in registered, "the admin walk is broken"
    problems += [f"console model {m} is not classified" for m in sorted(registered - set(CONSOLE))]
    ws_routes = {str(p.pattern) for p in chat_routing.websocket_urlpatterns}
    problems += [f"websocket {r} is not classified" for r in sorted(ws_routes - set(WEBSOCKETS))]
    assert not problems, f"classify these in {__file__}:\n" + "\n".join(problems)


# --- The data ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _slot(provider, hours: float) -> Slot:
    start = (timezone.now() + timedelta(hours=hours)).replace(second=0, microsecond=0)
    return Slot.objects.create(provider=provider, start=start, end=start + timedelta(minutes=30))


def _consultation(patient, provider, *, status, hours: float) -> Consultation:
    start = (timezone.now() + timedelta(hours=hours)).replace(microsecond=0)
    return Consultation.objects.create(
        patient=patient,
        provider=provider,
        organization_id=provider.organization_id,
        scheduled_start=start,
        scheduled_end=start + timedelta(minutes=30),
        status=status,
        reason="Dizziness",
    )


@pytest.fixture
def world(make_user, organization):
    """One clinic with every kind of PHI object, owned by ``patient`` unless named."""
    from attachments.models import Attachment, AttachmentStatus

    provider = make_user(Role.PROVIDER, organization=organization)
    # Sees a patient now (the queue's "call next" needs ``provider`` free).
    colleague = make_user(Role.PROVIDER, organization=organization)
    staff = make_user(Role.STAFF, organization=organization)
    patient, queued, newcomer = (make_user(Role.PATIENT) for _ in range(3))
    booked, _ = services.consultation_book(
        patient=patient, slot_id=_slot(provider, 6).pk, reason="Migraine"
    )
    in_progress = _consultation(
        patient, colleague, status=ConsultationStatus.IN_PROGRESS, hours=-0.2
    )
    past = _consultation(patient, provider, status=ConsultationStatus.SCHEDULED, hours=-3)
    # Starting now: a check-in is refused on any other clinic day, whatever the hour of the run.
    today = _consultation(
        patient,
        make_user(Role.PROVIDER, organization=organization),
        status=ConsultationStatus.SCHEDULED,
        hours=0,
    )
    entry = services.queue_join(patient=queued, provider=provider, reason="Chest pain")
    # ``patient`` waits too (its dashboard shows the place and the reason).
    services.queue_join(patient=patient, provider=colleague, reason="Sore throat")
    record = services.medical_record_add(author=provider, patient=patient, kind="note", text="x")
    chat_services.message_send(consultation=booked, sender=provider, body="Hi", client_id="w-1")
    attachment = Attachment.objects.create(
        uploader=patient,
        consultation=booked,
        patient=patient,
        organization=organization,
        filename="results.pdf",
        content_type="application/pdf",
        size=10,
        status=AttachmentStatus.READY,
        storage_key=f"attachments/test-{booked.pk}.pdf",
        completed_at=timezone.now(),
    )
    return {
        "users": {
            "patient": patient,
            "provider": provider,
            "colleague": colleague,
            "staff": staff,
            "queued": queued,
            "newcomer": newcomer,
        },
        "ids": {
            "provider_id": provider.pk,
            "consultation_id": booked.pk,
            "in_progress": in_progress.pk,
            "past": past.pk,
            "today": today.pk,
            "entry_id": entry.pk,
            "patient_id": patient.pk,
            "attachment_id": attachment.pk,
            "action": "check-in",
        },
        "bodies": {
            "book": lambda: {"slot": _slot(provider, 30).pk, "reason": "Cough"},
            "reschedule": lambda: {"slot": _slot(provider, 40).pk},
            "desk_patient": lambda: {"patient": patient.pk},
            "desk_cancel": lambda: {"ids": str(booked.pk)},
        },
        "objects": {
            Consultation: booked,
            QueueEntry: entry,
            MedicalRecordEntry: record,
        },
    }


def _api_client(user) -> APIClient:
    raw, _token = account_services.token_issue(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture(autouse=True)
def audit_batches(monkeypatch) -> list[int]:
    """The size of each audit write (one INSERT, one stream append, or one join of the
    request's transaction), whatever ``AUDIT_WRITE_PATH`` says."""
    from medease import audit as medease_audit

    batches: list[int] = []
    write = medease_audit._events_write

    def counted(events):
        batches.append(len(events))
        return write(events)

    monkeypatch.setattr(medease_audit, "_events_write", counted)
    return batches


def _audited(do, batches: list[int]) -> tuple[object, list[AuditEvent], int]:
    """Run the request; its response, the audit events it wrote and its audit INSERTs
    (``batches`` then holds its audit writes)."""
    batches.clear()
    last = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    with CaptureQueriesContext(connection) as queries:
        response = do()
    inserts = sum('INSERT INTO "medease_auditevent"' in q["sql"] for q in queries)
    return response, list(AuditEvent.objects.filter(id__gt=last)), inserts


def _assert_one_batch(label, response, events, inserts, user, batches) -> None:
    assert events, f"{label} wrote no audit event"
    assert batches == [len(events)], f"{label} wrote its audit events in batches {batches}"
    # The tests' default path is one INSERT; the stream path appends instead.
    expected_inserts = 1 if settings.AUDIT_WRITE_PATH == "sync" else 0
    assert inserts <= 1 and inserts >= expected_inserts, f"{label}: {inserts} audit INSERTs"
    assert {e.request_id for e in events} == {response["X-Request-ID"]}, label
    assert {e.user_id for e in events} == {user.pk}, label


def _call_joined(world) -> None:
    from visits import services as visit_services  # the video-visit app, if installed

    consultation = Consultation.objects.get(pk=world["ids"]["consultation_id"])
    visit_services.call_join(consultation=consultation, user=world["users"]["patient"])


SETUPS = {"call": _call_joined}


# --- Routes: the API and the console's own pages ------------------------------------------


@pytest.mark.parametrize(("key", "method", "spec"), _phi_cases())
def test_a_phi_route_writes_one_audit_batch(world, key, method, spec, audit_batches):
    route = next(route for route, route_key, _ in _routes() if route_key == key)
    ids = world["ids"]
    url = "/" + _KWARG.sub(lambda m: str(ids[spec.ids.get(m.group(1), m.group(1))]), route)
    body = spec.body
    if isinstance(body, str):
        body = world["bodies"][body]()
    if spec.setup:
        SETUPS[spec.setup](world)
    user = world["users"][spec.actor]
    http = spec.http or ("get" if method == "*" else method)
    if spec.browser:
        client = Client()
        client.force_login(user)
        response, events, inserts = _audited(
            lambda: getattr(client, http)(url, body), audit_batches
        )
    else:
        client = _api_client(user)
        response, events, inserts = _audited(
            lambda: getattr(client, http)(url, body, format="json"), audit_batches
        )
    label = f"{http.upper()} {url} ({key})"
    assert response.status_code == spec.status, f"{label}: {response.content[:300]!r}"
    _assert_one_batch(label, response, events, inserts, user, audit_batches)
    assert {e.action for e in events} == {spec.action}, label
    types = {e.object_type for e in events}
    if spec.browser:
        # A page shows what the day holds (today's visits): never an unexpected kind.
        assert types <= spec.object_types, label
    else:
        assert types == spec.object_types, label


# --- The console's model pages ----------------------------------------------------------


def test_every_phi_console_model_page_writes_one_audit_batch(world, audit_batches):
    staff = world["users"]["staff"]
    browser = Client()
    browser.force_login(staff)
    checked = 0
    for model in admin.site._registry:
        if CONSOLE[model._meta.label_lower] != "phi":
            continue
        opts = model._meta
        obj = world["objects"][model]
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
        for url in (changelist, change):
            response, events, inserts = _audited(lambda url=url: browser.get(url), audit_batches)
            assert response.status_code == 200, url
            _assert_one_batch(url, response, events, inserts, staff, audit_batches)
            if url == changelist:
                shown = {row.pk for row in response.context["cl"].result_list}
            else:
                shown = {obj.pk}
            assert {int(e.object_id) for e in events} == shown, url
            assert obj.pk in shown, url
            checked += 1
    assert checked == 2 * sum(1 for kind in CONSOLE.values() if kind == "phi")


# --- The websocket ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_chat_socket_audits_once_on_connect_and_never_per_message(
    world,
    sockets,  # noqa: F811 (the fixture imported above)
):
    db = database_sync_to_async
    consultation_id = world["ids"]["consultation_id"]
    staff, patient = world["users"]["staff"], world["users"]["patient"]

    @db
    def reads_after(last: int) -> list[AuditEvent]:
        return list(AuditEvent.objects.filter(id__gt=last, action="read").order_by("id"))

    @db
    def last_id() -> int:
        return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0

    for route in WEBSOCKETS:
        assert route == "ws/consultations/<int:consultation_id>/"
        start = await last_id()
        observer = await sockets(
            ws_path(consultation_id, ticket=await db(issue_ticket)(staff)),
            [(b"x-request-id", b"completeness-socket")],
        )
        opened = await reads_after(start)
        assert [(e.user_id, e.object_id, e.request_id) for e in opened] == [
            (staff.pk, str(consultation_id), "completeness-socket")
        ]
        sender = await sockets(ws_path(consultation_id, ticket=await db(issue_ticket)(patient)))
        connected = await last_id()
        for n in range(3):
            await sender.send({"type": "message.send", "body": f"m{n}", "client_id": f"s-{n}"})
            assert (await observer.receive_type("message"))["message"]["body"] == f"m{n}"
        assert await reads_after(connected) == []
