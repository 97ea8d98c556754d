"""The floor (bench/http_floor.py): a bare Django view, one ``SELECT 1`` through the pool."""

from django.db import connection
from django.http import HttpResponse
from django.urls import path


def floor(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return HttpResponse(b'{"ok": true}', content_type="application/json")


# /health/live as well, so the harness's readiness check works unchanged.
urlpatterns = [path("floor", floor), path("health/live", floor)]
