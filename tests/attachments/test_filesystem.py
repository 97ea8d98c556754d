"""What only the embedded default's own signed views do, and the STORAGE_URL setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.attachments.test_flow import PDF, create


@pytest.fixture
def filesystem(settings, tmp_path):
    settings.ATTACHMENT_STORAGE = None
    settings.ATTACHMENT_DIR = tmp_path / "attachments"


@pytest.mark.postgres
def test_upload_over_the_size_cap_is_413_and_nothing_is_stored(
    filesystem, clinic, token_client, client, settings, tmp_path
):
    settings.ATTACHMENT_MAX_BYTES = 1000
    created = create(
        token_client(clinic["patient"]),
        clinic["consultation"],
        filename="a.pdf",
        content_type="application/pdf",
        size=900,
    ).json()
    path = created["upload"]["url"].removeprefix("http://testserver")
    response = client.generic("PUT", path, data=PDF + b"x" * 2000, content_type="application/pdf")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert not any(p.is_file() for p in (tmp_path / "attachments").rglob("*"))


@pytest.mark.postgres
def test_signed_file_urls_answer_only_their_method(filesystem, clinic, token_client, client):
    created = create(
        token_client(clinic["patient"]),
        clinic["consultation"],
        filename="a.pdf",
        content_type="application/pdf",
        size=10,
    ).json()
    path = created["upload"]["url"].removeprefix("http://testserver")
    assert client.get(path).status_code == 405
    assert client.get("/files/download/not-a-token").status_code == 403


@pytest.mark.parametrize(
    "url",
    ["ftp://a:b@host/bucket", "s3://host/bucket", "s3://a:b@host/", "s3://a:b@host:notaport/b"],
)
def test_a_bad_storage_url_stops_start_up(url):
    env = {**os.environ, "STORAGE_URL": url}
    result = subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "STORAGE_URL" in result.stderr


def test_a_storage_url_is_parsed():
    env = {
        **os.environ,
        "STORAGE_URL": "s3+http://KEY:SE%2FCRET@127.0.0.1:8333/bucket?region=eu-west-1",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, config.settings as s; print(json.dumps(s.ATTACHMENT_STORAGE))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "endpoint_url": "http://127.0.0.1:8333",
        "bucket": "bucket",
        "access_key": "KEY",
        "secret_key": "SE/CRET",
        "region": "eu-west-1",
    }


@pytest.mark.postgres
def test_a_store_that_cannot_be_reached_is_a_503(clinic, token_client, settings):
    from tests.attachments.conftest import _free_ports

    (port,) = _free_ports(1)  # nobody listens there
    settings.ATTACHMENT_STORAGE = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "bucket": "nowhere",
        "access_key": "k",
        "secret_key": "s",
        "region": "us-east-1",
    }
    api = token_client(clinic["patient"])
    created = create(
        api, clinic["consultation"], filename="a.pdf", content_type="application/pdf", size=10
    )
    assert created.status_code == 201  # presigning needs no network
    response = api.post(f"/api/v1/attachments/{created.json()['id']}/complete")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
