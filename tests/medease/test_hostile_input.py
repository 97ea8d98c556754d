"""Hostile input to the REST API is a 400 with the error shape, never a 500."""

from __future__ import annotations

import base64
from urllib.parse import urlencode

import pytest
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import Role

pytestmark = pytest.mark.django_db

DEEP = "[" * 50_000


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"}
    if code is not None:
        assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["fields"], dict)
    return error


@pytest.fixture
def token_client():
    def make(user) -> APIClient:
        raw, _token = account_services.token_issue(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


# --- Deeply nested JSON ----------------------------------------------------------------


def test_deeply_nested_json_to_login_is_400(api):
    response = api.post("/api/v1/auth/login", data=DEEP, content_type="application/json")
    assert_error(response, 400, "malformed_request")


@pytest.mark.parametrize("body", [DEEP, "{" + '"a":{' * 30_000, "[" * 100 + "]" * 100])
def test_deeply_nested_json_to_an_authenticated_endpoint_is_400(token_client, patient, body):
    response = token_client(patient).post(
        "/api/v1/consultations", data=body, content_type="application/json"
    )
    assert_error(response, 400, "malformed_request")


def test_nesting_within_reason_still_parses(api):
    # The guard is against exhausting the stack, not against ordinary nesting.
    body = '{"email": "x@example.test", "password": ' + "[" * 50 + "]" * 50 + "}"
    response = api.post("/api/v1/auth/login", data=body, content_type="application/json")
    assert_error(response, 400, "invalid")


# --- Tampered pagination cursors -------------------------------------------------------


def _cursor(**parts: str) -> str:
    return base64.b64encode(urlencode(parts).encode()).decode()


TAMPERED = {
    "position-not-a-number": _cursor(p="abc"),
    "position-empty": _cursor(p=""),
    "position-overflow": _cursor(p="1e999"),
    "position-nan": _cursor(p="nan"),
    "position-huge": _cursor(p="9" * 40),
    "offset-overflow": _cursor(o="1e999"),
    "reverse-garbage": _cursor(r="x", p="1"),
    "base64-garbage": "%%%not-base64",
    "base64-of-binary": base64.b64encode(b"\xff\xfe\x00p=\x80").decode(),
    "empty": "",
}


@pytest.fixture
def list_urls(patient):
    return {
        "providers": "/api/v1/providers",
        "notifications": "/api/v1/notifications",
        "records": f"/api/v1/patients/{patient.pk}/records",
    }


@pytest.mark.parametrize("resource", ["providers", "notifications", "records"])
@pytest.mark.parametrize("cursor", list(TAMPERED.values()), ids=list(TAMPERED))
def test_tampered_cursor_is_400(token_client, patient, list_urls, resource, cursor):
    response = token_client(patient).get(list_urls[resource], {"cursor": cursor})
    if cursor == "":
        # No cursor at all: the first page.
        assert response.status_code == 200, response.content
        return
    error = assert_error(response, 400, "invalid")
    assert "cursor" in error["fields"]


def test_a_real_cursor_still_pages(token_client, patient, make_user, organization):
    for _ in range(3):
        make_user(Role.PROVIDER, organization=organization)
    client = token_client(patient)
    first = client.get("/api/v1/providers", {"limit": 2}).json()
    assert len(first["results"]) == 2 and first["next"]
    second = client.get(first["next"]).json()
    assert len(second["results"]) == 1 and second["next"] is None
    back = client.get(second["previous"]).json()
    assert [p["id"] for p in back["results"]] == [p["id"] for p in first["results"]]
