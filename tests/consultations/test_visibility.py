"""Walks the URLconf: for every /api/v1/ route that takes an object id, an unrelated patient
and a provider of another clinic get 404 (never a hint that the object exists).

Every such route needs a case in ``CASES``: a new route without one fails this test, so
whoever adds a route decides, here, who may reach it. A route that is public on purpose
(open slots, joining a walk-in queue) says so with the statuses outsiders get instead.

The same policy (``objects.visible_to``) serves the staff console and the chat websocket:
walking the admin registry, every console page of a model holding patient data keeps another
clinic's staff out, and an outsider's websocket to the consultation is closed 4403.
"""

from __future__ import annotations

import re

import pytest
from channels.db import database_sync_to_async
from django.contrib import admin
from django.test import Client
from django.urls import URLResolver, get_resolver, reverse

from accounts.models import Role, User
from attachments import services as attachment_services
from attachments.models import Attachment
from consultations import services
from consultations.models import Consultation, ConsultationStatus, MedicalRecordEntry, QueueEntry
from visits import services as visit_services
from workers.models import Notification

pytestmark = pytest.mark.django_db

NOT_FOUND = {"patient": 404, "provider": 404}

# route name → {method: {"body": request body, "outsiders": {role: status}, "owner": who
# gets 200 on GET (proves the ids point at real objects)}}
CASES: dict[str, dict[str, dict]] = {
    "provider-slots": {
        # Open slots are public: patients may book any clinic's providers.
        "get": {"outsiders": {"patient": 200, "provider": 200}, "owner": "patient"},
    },
    "provider-availability": {
        "get": {"outsiders": NOT_FOUND, "owner": "provider"},
        "put": {"outsiders": NOT_FOUND, "body": {"windows": []}},
    },
    "provider-queue": {
        "get": {"outsiders": NOT_FOUND, "owner": "staff"},
        # Any patient may join any provider's walk-in queue; providers never join.
        "post": {"outsiders": {"patient": 201, "provider": 403}, "body": {}},
    },
    "provider-queue-next": {"post": {"outsiders": NOT_FOUND}},
    "consultation-detail": {"get": {"outsiders": NOT_FOUND, "owner": "patient"}},
    "consultation-cancel": {"post": {"outsiders": NOT_FOUND, "body": {}}},
    "consultation-start": {"post": {"outsiders": NOT_FOUND}},
    "consultation-complete": {"post": {"outsiders": NOT_FOUND, "body": {}}},
    "consultation-no-show": {"post": {"outsiders": NOT_FOUND}},
    "consultation-reschedule": {"post": {"outsiders": NOT_FOUND, "body": "free_slot"}},
    # Chat (messaging/urls.py): participants only.
    "consultation-messages": {
        "get": {"outsiders": NOT_FOUND, "owner": "patient"},
        "post": {"outsiders": NOT_FOUND, "body": {"body": "Hello?", "client_id": "peek-1"}},
    },
    "consultation-read": {"post": {"outsiders": NOT_FOUND, "body": {"message_id": 1}}},
    "queue-entry": {
        "get": {"outsiders": NOT_FOUND, "owner": "patient"},
        "delete": {"outsiders": NOT_FOUND},
    },
    "patient-records": {
        "get": {"outsiders": NOT_FOUND, "owner": "provider"},
        "post": {"outsiders": NOT_FOUND, "body": {"kind": "note", "text": "Peeking"}},
    },
    # Attachments (attachments/urls.py): the consultation's people; complete: the uploader.
    "consultation-attachments": {
        "post": {
            "outsiders": NOT_FOUND,
            "body": {"filename": "a.pdf", "content_type": "application/pdf", "size": 10},
        }
    },
    # A file for a patient's record: the clinics that treat the patient.
    "patient-attachments": {
        "post": {
            "outsiders": NOT_FOUND,
            "body": {"filename": "a.pdf", "content_type": "application/pdf", "size": 10},
        }
    },
    "attachment": {"get": {"outsiders": NOT_FOUND, "owner": "patient"}},
    "attachment-complete": {"post": {"outsiders": NOT_FOUND}},
    # Video visits (visits/urls.py): the consultation's people (GET: also its clinic's staff).
    "consultation-call": {
        "get": {"outsiders": NOT_FOUND, "owner": "staff"},
        "post": {"outsiders": NOT_FOUND},
        "delete": {"outsiders": NOT_FOUND},
    },
}

_HTTP_METHODS = ("get", "post", "put", "patch", "delete")
_KWARG = re.compile(r"<(?:\w+:)?(\w+)>")


def _routes_with_ids():
    """(route, name, view class) of every /api/v1/ route with a path parameter."""

    def walk(patterns, prefix):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, route)
            else:
                yield route, pattern

    for route, pattern in walk(get_resolver().url_patterns, ""):
        if route.startswith("api/v1/") and _KWARG.search(route):
            view_class = getattr(pattern.callback, "view_class", None) or getattr(
                pattern.callback, "cls", None
            )
            yield route, pattern.name, view_class


@pytest.fixture
def world(patient, provider, staff, make_user, make_slot, book):
    """One clinic's objects: a booking, a queue entry and a record entry of ``patient``."""
    consultation = book(patient, make_slot(provider, hours=6))
    queued = make_user(Role.PATIENT)
    entry = services.queue_join(patient=queued, provider=provider)
    record = services.medical_record_add(author=provider, patient=patient, kind="note", text="x")
    free_slot = make_slot(provider, hours=9)
    attachment = attachment_services.attachment_create(
        uploader=patient,
        consultation=consultation,
        filename="scan.pdf",
        content_type="application/pdf",
        size=10,
    )
    # The patient waits in the visit's call (the provider has not joined: still scheduled).
    call = visit_services.call_join(consultation=consultation, user=patient)
    return {
        "ids": {
            "provider_id": provider.pk,
            "consultation_id": consultation.pk,
            "entry_id": entry.pk,
            "patient_id": patient.pk,
            "attachment_id": attachment.pk,
        },
        "owners": {"patient": patient, "provider": provider, "staff": staff},
        # The queue entry belongs to its own patient (owner of queue-entry routes).
        "entry_owner": queued,
        "bodies": {"free_slot": {"slot": free_slot.pk}},
        "consultation": consultation,
        "entry": entry,
        "record": record,
        "attachment": attachment,
        "call": call,
        # The booking's confirmation to the patient (the outbox, written with the booking).
        "notification": Notification.objects.filter(user=patient).earliest("id"),
    }


def test_every_route_with_an_object_id_has_a_case():
    routes = list(_routes_with_ids())
    assert routes, "the URLconf walk found no routes: the walker is broken"
    missing = sorted(f"{name} ({route})" for route, name, _ in routes if name not in CASES)
    assert not missing, f"routes without a visibility case in {__file__}: {missing}"
    for route, name, view_class in routes:
        implemented = {m for m in _HTTP_METHODS if hasattr(view_class, m)}
        assert implemented == set(CASES[name]), (
            f"{name} ({route}) implements {sorted(implemented)}, "
            f"the case covers {sorted(CASES[name])}"
        )


def test_outsiders_get_404_on_every_route_with_an_object_id(
    world, other_patient, other_provider, token_client
):
    outsiders = {"patient": token_client(other_patient), "provider": token_client(other_provider)}
    checked = 0
    for route, name, _view in _routes_with_ids():
        case = CASES.get(name)
        if case is None:
            pytest.fail(f"no visibility case for {name} ({route})")
        url = "/" + _KWARG.sub(lambda m: str(world["ids"][m.group(1)]), route)
        for method, spec in case.items():
            body = spec.get("body")
            if isinstance(body, str):
                body = world["bodies"][body]
            for role, client in outsiders.items():
                response = getattr(client, method)(url, body, format="json")
                expected = spec["outsiders"][role]
                assert response.status_code == expected, (
                    f"{role} outsider {method.upper()} {url} ({name}): "
                    f"{response.status_code} {response.content[:200]!r}, expected {expected}"
                )
                if expected == 404:
                    assert response.json()["error"]["code"] == "not_found"
                checked += 1
    assert checked >= 2 * sum(len(case) for case in CASES.values())
    # Nothing an outsider sent changed the clinic's objects.
    assert Consultation.objects.get(pk=world["consultation"].pk).status == (
        ConsultationStatus.SCHEDULED
    )
    assert QueueEntry.objects.get(pk=world["entry"].pk).status == "waiting"
    assert list(MedicalRecordEntry.objects.values_list("pk", flat=True)) == [world["record"].pk]


def test_owners_reach_the_same_routes(world, token_client):
    """The ids used above point at real objects: their owners get 200."""
    for route, name, _view in _routes_with_ids():
        spec = CASES[name].get("get")
        if not spec or "owner" not in spec:
            continue
        owner = world["owners"][spec["owner"]]
        if name == "queue-entry":
            owner = world["entry_owner"]
        url = "/" + _KWARG.sub(lambda m: str(world["ids"][m.group(1)]), route)
        response = token_client(owner).get(url)
        assert response.status_code == 200, f"{spec['owner']} GET {url}: {response.status_code}"


def test_staff_of_another_clinic_also_get_404(world, other_staff, token_client):
    client = token_client(other_staff)
    ids = world["ids"]
    for url in (
        f"/api/v1/consultations/{ids['consultation_id']}",
        f"/api/v1/providers/{ids['provider_id']}/availability",
        f"/api/v1/providers/{ids['provider_id']}/queue",
        f"/api/v1/queue-entries/{ids['entry_id']}",
        f"/api/v1/patients/{ids['patient_id']}/records",
    ):
        assert client.get(url).status_code == 404, url


# --- The staff console --------------------------------------------------------------------

# Registered console models whose manager has ``visible_to`` (patient data) → the world's
# object of that model. A new such model without an entry fails the walk below.
CONSOLE_OBJECTS = {
    Consultation: "consultation",
    QueueEntry: "entry",
    MedicalRecordEntry: "record",
    Notification: "notification",
    Attachment: "attachment",
}


def _console_models_with_patient_data():
    return [
        model
        for model in admin.site._registry
        if hasattr(model._default_manager.get_queryset(), "visible_to")
    ]


def _browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_every_console_model_with_patient_data_has_a_case():
    models = _console_models_with_patient_data()
    assert Consultation in models, "the admin walk found nothing: the walker is broken"
    assert set(models) == set(CONSOLE_OBJECTS)


def test_another_clinics_staff_never_see_an_object_in_the_console(world, other_staff):
    client = _browser(other_staff)
    for model in _console_models_with_patient_data():
        obj = world[CONSOLE_OBJECTS[model]]
        opts = model._meta
        changelist = client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        if changelist.status_code == 200:
            assert obj.pk not in {row.pk for row in changelist.context["cl"].result_list}
        else:
            assert changelist.status_code == 403, (opts.model_name, changelist.status_code)
        change = client.get(
            reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
        )
        # Django's "does not exist" redirect to the index, a 404 or a 403: never the page.
        assert change.status_code in (302, 403, 404), (opts.model_name, change.status_code)
        if change.status_code == 302:
            assert change.url == reverse("admin:index")
    board = client.get(reverse("admin:consultations_today"))
    assert board.status_code == 200
    shown = [c.pk for row in board.context["rows"] for c in row["consultations"]]
    queued = [e.pk for row in board.context["rows"] for e in row["queue"]]
    assert world["consultation"].pk not in shown and world["entry"].pk not in queued


def test_the_console_pages_show_the_objects_to_those_who_may_see_them(world, staff):
    """The ids above are real: the clinic's staff and a superuser open the same pages."""
    root = User.objects.create_superuser("root@example.test", "x-very-long-pass-123")
    for model, key in CONSOLE_OBJECTS.items():
        obj = world[key]
        opts = model._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
        assert _browser(root).get(url).status_code == 200, opts.model_name
        if (
            _browser(staff)
            .get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
            .status_code
            == 200
        ):
            assert _browser(staff).get(url).status_code == 200, opts.model_name


# --- The chat websocket -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_outsiders_websockets_are_closed_4403(
    world, other_patient, other_provider, other_staff
):
    from tests.messaging.conftest import Socket, issue_ticket, ws_path

    consultation_id = world["consultation"].pk
    for outsider in (other_patient, other_provider, other_staff):
        ticket = await database_sync_to_async(issue_ticket)(outsider)
        socket = Socket(ws_path(consultation_id, ticket=ticket))
        try:
            await socket.connect()  # accepted, then closed with the reason
            assert await socket.closed_with() == 4403, outsider.role
        finally:
            await socket.close()
    # The ticket and path are right: the consultation's patient is let in.
    ticket = await database_sync_to_async(issue_ticket)(world["owners"]["patient"])
    socket = Socket(ws_path(consultation_id, ticket=ticket))
    try:
        await socket.connect()
        await socket.send({"type": "message.send", "body": "Hello", "client_id": "vis-1"})
        assert (await socket.receive_type("message"))["message"]["body"] == "Hello"
    finally:
        await socket.close()


# --- The querysets themselves ---------------------------------------------------------------


def test_visible_to_per_model_and_role(world, other_patient, other_provider, other_staff):
    from messaging import services as chat_services
    from messaging.models import Message

    patient, provider, staff = (world["owners"][k] for k in ("patient", "provider", "staff"))
    message, _ = chat_services.message_send(
        consultation=world["consultation"], sender=patient, body="Hi", client_id="vis-q"
    )
    rows = {
        Consultation: world["consultation"],
        QueueEntry: world["entry"],
        MedicalRecordEntry: world["record"],
        Message: message,
    }
    # The queue entry is another patient's; everything else is ``patient``'s.
    insiders = {
        Consultation: [patient, provider, staff],
        QueueEntry: [world["entry_owner"], provider, staff],
        MedicalRecordEntry: [patient, provider, staff],
        Message: [patient, provider, staff],
    }
    for model, row in rows.items():
        for user in insiders[model]:
            assert model.objects.visible_to(user).filter(pk=row.pk).exists(), (model, user.role)
        for user in (other_patient, other_provider, other_staff):
            assert not model.objects.visible_to(user).filter(pk=row.pk).exists(), (
                model,
                user.role,
            )
    assert world["consultation"].is_visible_to(staff)
    assert not world["consultation"].is_visible_to(other_staff)
