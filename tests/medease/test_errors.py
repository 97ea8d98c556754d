"""The error contract: every API error is JSON {"error": {code, message, fields}}."""

from __future__ import annotations

import pytest
from django.urls import path
from rest_framework.generics import ListAPIView
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.serializers import UserOutput
from config.urls import urlpatterns as real_urlpatterns

pytestmark = pytest.mark.django_db


class BoomApi(APIView):
    permission_classes = [AllowAny]

    def get(self, request):
        raise RuntimeError("a bug, not bad input")


class EchoApi(APIView):
    permission_classes = [AllowAny]

    def post(self, request):
        return Response({"got": request.data})


class UsersApi(ListAPIView):
    permission_classes = [AllowAny]
    serializer_class = UserOutput
    queryset = User.objects.all()


urlpatterns = [
    path("api/v1/test/boom", BoomApi.as_view()),
    path("api/v1/test/echo", EchoApi.as_view()),
    path("api/v1/test/users", UsersApi.as_view()),
    *real_urlpatterns,
]


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["fields"], dict)
    return error


def test_malformed_json_is_400(client):
    response = client.post("/api/v1/auth/login", data="{not json", content_type="application/json")
    assert_error(response, 400, "malformed_request")


def test_wrong_media_type_is_415(client):
    response = client.post("/api/v1/auth/login", data={"email": "x", "password": "y"})
    assert_error(response, 415, "unsupported_media_type")


def test_unknown_api_path_is_json_404(client):
    assert_error(client.get("/api/v1/no-such-thing"), 404, "not_found")


def test_non_api_404_is_not_json(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_wrong_method_is_405(client):
    assert_error(client.get("/api/v1/auth/login"), 405, "method_not_allowed")


def test_body_over_the_limit_is_413(client, settings):
    settings.API_MAX_BODY_BYTES = 100
    response = client.post(
        "/api/v1/auth/login", data='{"email": "' + "a" * 200 + '"}', content_type="application/json"
    )
    assert_error(response, 413, "too_large")


def test_wrong_types_are_field_errors_not_500(client):
    response = client.post(
        "/api/v1/auth/register",
        data={"email": ["a"], "password": {"x": 1}, "full_name": None},
        content_type="application/json",
    )
    error = assert_error(response, 400, "invalid")
    assert set(error["fields"]) == {"email", "password", "full_name"}


def test_json_that_is_not_an_object_is_400(client):
    response = client.post("/api/v1/auth/login", data="[1, 2]", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"invalid", "malformed_request"}


@pytest.mark.urls("tests.medease.test_errors")
def test_unhandled_exception_in_api_is_json_500_with_request_id(client):
    response = client.get("/api/v1/test/boom", HTTP_X_REQUEST_ID="trace-abc-12345")
    assert_error(response, 500, "server_error")
    assert response["X-Request-ID"] == "trace-abc-12345"


@pytest.mark.urls("tests.medease.test_errors")
@pytest.mark.parametrize("limit", ["abc", "0", "-3"])
def test_bad_limit_is_400(client, limit):
    error = assert_error(client.get(f"/api/v1/test/users?limit={limit}"), 400, "invalid")
    assert "limit" in error["fields"]


@pytest.mark.urls("tests.medease.test_errors")
def test_bad_cursor_is_400(client):
    error = assert_error(client.get("/api/v1/test/users?cursor=garbage!"), 400, "invalid")
    assert "cursor" in error["fields"]


@pytest.mark.urls("tests.medease.test_errors")
def test_cursor_pagination_shape(client, make_user):
    for _ in range(3):
        make_user()
    first = client.get("/api/v1/test/users?limit=2").json()
    assert set(first) >= {"results", "next"}
    assert len(first["results"]) == 2
    assert first["next"].startswith("http://testserver/api/v1/test/users?")
    second = client.get(first["next"]).json()
    assert len(second["results"]) == 1 and second["next"] is None
    ids = [u["id"] for u in first["results"] + second["results"]]
    assert len(set(ids)) == 3


@pytest.mark.urls("tests.medease.test_errors")
def test_limit_above_the_cap_is_clamped_to_100(client):
    # More rows than the cap, so a missing or raised cap would return all of them.
    total = 105
    User.objects.bulk_create(
        User(email=f"bulk{n}@example.test", full_name=f"Bulk {n}", password="!")
        for n in range(total)
    )
    first = client.get("/api/v1/test/users?limit=1000").json()
    assert len(first["results"]) == 100
    assert first["next"] is not None
    second = client.get(first["next"]).json()
    assert len(second["results"]) == total - 100 and second["next"] is None
    ids = {u["id"] for u in first["results"] + second["results"]}
    assert len(ids) == total
    assert len(client.get("/api/v1/test/users").json()["results"]) == 20
