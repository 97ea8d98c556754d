"""The orjson renderer writes the bytes DRF's JSONRenderer wrote."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.utils.translation import gettext_lazy
from rest_framework import renderers
from rest_framework.utils.serializer_helpers import ReturnDict, ReturnList

from medease.renderers import JSONRenderer

PAYLOAD = {
    "results": ReturnList(
        [
            ReturnDict(
                {
                    "id": 7,
                    "start": dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC),
                    "local": dt.datetime(2026, 11, 25, 13, 30, tzinfo=ZoneInfo("America/New_York")),
                    "micro": dt.datetime(2026, 11, 25, 18, 30, 0, 123456, tzinfo=dt.UTC),
                    "day": dt.date(2026, 11, 25),
                    "at": dt.time(9, 15),
                    "fee": Decimal("12.50"),
                    "token": uuid.UUID("12345678-1234-5678-1234-567812345678"),
                    "name": "Zoë Ångström 医生 🩺",
                    "note": "line\u2028break\u2029para",
                    "label": gettext_lazy("Cancelled"),
                    "tags": ("a", "b"),
                    "none": None,
                    "ok": True,
                    "ratio": 0.25,
                },
                serializer=None,
            )
        ],
        serializer=None,
    ),
    "next": None,
    3: "an int key",
}


def test_the_same_bytes_as_drf():
    assert JSONRenderer().render(PAYLOAD) == renderers.JSONRenderer().render(PAYLOAD)


def test_utc_datetimes_keep_drfs_z_suffix():
    content = JSONRenderer().render({"at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)})
    assert content == b'{"at":"2026-01-02T03:04:05Z"}'


def test_what_orjson_cannot_encode_is_left_to_drf():
    huge = {"n": 2**70}
    assert (
        JSONRenderer().render(huge)
        == renderers.JSONRenderer().render(huge)
        == (b'{"n":1180591620717411303424}')
    )


def test_indented_output_and_no_data_are_drfs():
    media = "application/json; indent=2"
    assert JSONRenderer().render({"a": [1]}, media) == renderers.JSONRenderer().render(
        {"a": [1]}, media
    )
    assert JSONRenderer().render(None) == b""
