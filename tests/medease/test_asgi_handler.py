"""The ASGI handler (medease/asgi.py): middleware and view in one thread hand-off, with the
request's context (request id, database routing state, time zone) reaching the view."""

from __future__ import annotations

import asyncio
import inspect
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import SyncToAsync
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Role
from consultations import services as consultation_services
from consultations.models import Slot
from medease.models import AuditEvent

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _application():
    from config.asgi import application, django_asgi_app

    return application, django_asgi_app


async def _get(path: str, **headers) -> httpx.Response:
    application, _ = _application()
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await client.get(path, headers=headers)


def test_the_middleware_chain_is_synchronous():
    _, handler = _application()
    chain = handler._middleware_chain
    # convert_exception_to_response keeps the inner handler's mode: sync all the way.
    assert not inspect.iscoroutinefunction(chain)
    assert not handler._view_middleware or not any(
        inspect.iscoroutinefunction(hook) for hook in handler._view_middleware
    )


@pytest.fixture
def consultation(transactional_db, make_user, organization):
    provider = make_user(Role.PROVIDER, organization=organization)
    patient = make_user(Role.PATIENT)
    start = timezone.now() + timedelta(days=1)
    slot = Slot.objects.create(provider=provider, start=start, end=start + timedelta(minutes=30))
    booked, _ = consultation_services.consultation_book(patient=patient, slot_id=slot.pk)
    raw, _token = account_services.token_issue(user=patient)
    return booked, raw


def test_one_thread_hand_off_runs_the_chain_and_the_view(consultation, monkeypatch):
    booked, raw = consultation
    handed_off: list[str] = []
    original = SyncToAsync.__call__

    async def spy(self, *args, **kwargs):
        handed_off.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", spy)
    request_id = "test-one-hop-0001"
    response = asyncio.run(
        _get(
            f"/api/v1/consultations/{booked.pk}",
            Authorization=f"Bearer {raw}",
            **{"X-Request-ID": request_id},
        )
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == request_id
    # The whole chain and the view: one call. The others are Django's own, which a bare
    # view pays as well (the request_started signal, closing the response).
    chain = [name for name in handed_off if name.endswith("get_response")]
    assert chain == ["BaseHandler.get_response"], handed_off
    assert len(handed_off) == 3, handed_off
    # The request id set by RequestIdMiddleware reached the view's audit row.
    event = AuditEvent.objects.get(object_type="consultation", object_id=str(booked.pk))
    assert event.request_id == request_id


def test_an_unknown_api_path_is_json_404_and_carries_a_request_id(transactional_db):
    response = asyncio.run(_get("/api/v1/no-such-thing"))
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert len(response.headers["X-Request-ID"]) >= 8
