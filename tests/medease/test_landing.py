"""The landing page at `/`, the API's index at `/api/v1/`, and 404s with DEBUG on."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import path

from config.urls import urlpatterns as real_urlpatterns

pytestmark = pytest.mark.django_db


def raise_404(request):
    from django.http import Http404

    raise Http404("no such thing")


urlpatterns = [path("test/missing", raise_404), *real_urlpatterns]


def test_the_landing_page_names_medease_and_links_the_console_docs_and_health():
    response = Client().get("/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    body = response.content.decode()
    assert "<title>MedEase</title>" in body
    for href in ('href="/admin/"', 'href="/api/docs/"', 'href="/health/ready"', 'href="/api/v1/"'):
        assert href in body
    assert "For clinic staff" in body


def test_the_landing_page_only_answers_safe_methods():
    assert Client().post("/").status_code == 405


def test_the_api_index_lists_the_top_level_resources_with_absolute_urls(api, settings):
    settings.ALLOWED_HOSTS = ["clinic.example.org"]
    response = api.get("/api/v1/", HTTP_HOST="clinic.example.org", secure=True)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert (body["name"], body["version"]) == ("MedEase API", "v1")
    base = "https://clinic.example.org"
    assert body["links"] == {
        "auth": {
            "register": f"{base}/api/v1/auth/register",
            "login": f"{base}/api/v1/auth/login",
            "logout": f"{base}/api/v1/auth/logout",
            "password": f"{base}/api/v1/auth/password",
        },
        "me": f"{base}/api/v1/me",
        "providers": f"{base}/api/v1/providers",
        "consultations": f"{base}/api/v1/consultations",
        "dashboard": f"{base}/api/v1/dashboard",
        "notifications": f"{base}/api/v1/notifications",
        "notification-preferences": f"{base}/api/v1/notifications/preferences",
        "ws-ticket": f"{base}/api/v1/ws-ticket",
        "schema": f"{base}/api/schema/",
        "docs": f"{base}/api/docs/",
    }


def test_every_api_index_link_resolves(api):
    def urls(value):
        if isinstance(value, dict):
            for sub in value.values():
                yield from urls(sub)
        else:
            yield value

    for url in urls(api.get("/api/v1/").json()["links"]):
        path_only = url.removeprefix("http://testserver")
        # Signed out: each answers as itself (401/405/200), never 404.
        assert api.get(path_only).status_code != 404, url


def test_the_api_index_refuses_other_methods_in_json(api):
    response = api.post("/api/v1/", {}, format="json")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("debug", [True, False])
def test_an_unknown_url_never_gets_the_debug_page_listing_the_url_patterns(settings, debug):
    settings.DEBUG = debug
    client = Client()

    api = client.get("/api/v1/no-such-resource")
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "not_found"
    assert client.get("/api/nothing-here").json()["error"]["code"] == "not_found"

    page = client.get("/no-such-page")
    assert page.status_code == 404
    assert b"URLconf" not in page.content
    assert b"api/v1/" not in page.content


def test_with_debug_on_the_console_still_gets_its_trailing_slash(settings):
    settings.DEBUG = True

    response = Client().get("/admin")

    assert response.status_code == 301
    assert response["Location"] == "/admin/"


def test_with_debug_on_a_404_raised_by_a_view_keeps_the_debug_page(settings):
    settings.DEBUG = True
    settings.ROOT_URLCONF = __name__

    response = Client().get("/test/missing")

    assert response.status_code == 404
    assert b"no such thing" in response.content
