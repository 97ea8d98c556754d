"""Chunked request bodies (no Content-Length) through the real server: the Procfile's
uvicorn serving config.asgi. Django's request sees a body without a length as empty, so
the ASGI entry point must give it one, and refuse one over the limit with a 413."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.webserver import web_node

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

BODY_LIMIT = 8 * 1024


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory):
    """One server for the module (each test still gets its own committed, flushed data)."""
    with web_node(
        tmp_path_factory.mktemp("chunked"),
        API_MAX_BODY_BYTES=str(BODY_LIMIT),
        ATTACHMENT_MAX_BYTES=str(BODY_LIMIT),
        DATABASE_POOL_MAX_SIZE="2",
    ) as node:
        yield node


def chunks(data: bytes, size: int = 100):
    """A generator body: httpx sends it with Transfer-Encoding: chunked, no Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def post_chunked(url: str, data: bytes, **headers) -> httpx.Response:
    request = httpx.Request(
        "POST",
        url,
        content=chunks(data),
        headers={"Content-Type": "application/json", **headers},
    )
    assert request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in request.headers
    with httpx.Client(timeout=30) as client:
        return client.send(request)


def test_a_chunked_body_is_read(server):
    base, log = server
    body = {
        "email": "chunked@example.test",
        "password": "correct-horse-battery-staple",
        "full_name": "Chunked Sender",
    }
    response = post_chunked(f"{base}/api/v1/auth/register", json.dumps(body).encode())
    assert response.status_code == 201, (response.text, log.read_text()[-2000:])
    assert response.json()["email"] == "chunked@example.test"

    login = post_chunked(
        f"{base}/api/v1/auth/login",
        json.dumps({"email": body["email"], "password": body["password"]}).encode(),
    )
    assert login.status_code == 200, login.text
    assert login.json()["token"]


def test_a_chunked_body_over_the_limit_is_413(server):
    base, _log = server
    padding = "a" * (BODY_LIMIT + 1)
    data = json.dumps({"email": "big@example.test", "password": padding}).encode()
    response = post_chunked(f"{base}/api/v1/auth/login", data)
    assert response.status_code == 413, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "too_large" and error["message"] and error["fields"] == {}


def test_a_chunked_body_at_the_limit_is_accepted(server):
    base, _log = server
    head = b'{"email": "edge@example.test", "password": "wrong", "padding": "'
    tail = b'"}'
    data = head + b"a" * (BODY_LIMIT - len(head) - len(tail)) + tail
    assert len(data) == BODY_LIMIT
    response = post_chunked(f"{base}/api/v1/auth/login", data)
    # Parsed (wrong credentials), not "field required" and not 413.
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_credentials"


def raw_request(base: str, head: str) -> bytes:
    """Send only a request head (no body) and read the answer: a server that waited for
    the declared body would never answer, and the socket's timeout would fail the test."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head.encode("ascii"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/api/v1/auth/login", "application/json"), ("/files/upload/any-token", "image/png")],
)
def test_a_declared_length_over_the_limit_is_413_before_the_body(server, path, content_type):
    base, _log = server
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {50 * 1024 * 1024 * 1024}\r\n\r\n"
    )
    answer = raw_request(base, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
