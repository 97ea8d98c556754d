"""Rate limits count across web nodes: two uvicorn processes share one Redis, and a client
that alternates between them meets the same limit as one that sticks to a node.

The session's nodes run with small limits (tests/scale/conftest.py): failed logins 5 per
account and 8 per IP per 15 minutes, bookings 4 and messages 6 per user per hour.
"""

from __future__ import annotations

import pytest

from tests.scale.harness import unique

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _alternating(nodes, ip: str):
    https = [node.http(ip=ip) for node in nodes]
    index = 0
    while True:
        yield https[index % 2]
        index += 1


def test_failed_logins_per_account_count_across_nodes(nodes, clinic, test_ip):
    http_a = nodes[0].http(ip=test_ip)
    email, _ = clinic.register(http_a)
    turn = _alternating(nodes, test_ip)
    for attempt in range(5):
        response = next(turn).post(
            "/api/v1/auth/login", json={"email": email, "password": f"wrong-{attempt}"}
        )
        assert response.status_code == 401, (attempt, response.text)
    # The sixth attempt, right password, on either node: locked.
    for http in (nodes[0].http(ip=test_ip), nodes[1].http(ip=test_ip)):
        response = http.post(
            "/api/v1/auth/login", json={"email": email, "password": clinic.db.password}
        )
        assert response.status_code == 429, response.text
        assert int(response.headers["Retry-After"]) > 0


def test_failed_logins_per_ip_count_across_nodes(nodes, clinic, test_ip):
    turn = _alternating(nodes, test_ip)
    for attempt in range(8):  # 8 different unknown accounts from one address
        response = next(turn).post(
            "/api/v1/auth/login",
            json={"email": f"{unique('nobody-')}@scale.test", "password": f"x{attempt}"},
        )
        assert response.status_code == 401, (attempt, response.text)
    email, _ = clinic.register(nodes[0].http(ip=test_ip))
    for http in (nodes[0].http(ip=test_ip), nodes[1].http(ip=test_ip)):
        response = http.post(
            "/api/v1/auth/login", json={"email": email, "password": clinic.db.password}
        )
        assert response.status_code == 429, response.text
    # Another address is not affected.
    other = nodes[1].http(ip="10.250.250.250")
    assert (
        other.post(
            "/api/v1/auth/login", json={"email": email, "password": clinic.db.password}
        ).status_code
        == 200
    )


def test_bookings_per_user_count_across_nodes(nodes, clinic, slots, test_ip):
    _, _, token = clinic.patient(nodes[0].http(ip=test_ip))
    turn = _alternating(nodes, test_ip)
    for _ in range(4):
        response = clinic.book(next(turn), token, slots.take())
        assert response.status_code == 201, response.text
    for http in (nodes[0].http(ip=test_ip), nodes[1].http(ip=test_ip)):
        response = clinic.book(http, token, slots.take())
        assert response.status_code == 429, response.text
        assert int(response.headers["Retry-After"]) > 0


def test_message_sends_per_user_count_across_nodes(nodes, clinic, slots, test_ip):
    _, _, token = clinic.patient(nodes[0].http(ip=test_ip))
    booked = clinic.book(nodes[0].http(ip=test_ip), token, slots.take())
    assert booked.status_code == 201, booked.text
    path = f"/api/v1/consultations/{booked.json()['id']}/messages"
    turn = _alternating(nodes, test_ip)
    for number in range(6):
        response = next(turn).post(
            path, token=token, json={"body": f"m{number}", "client_id": unique("c-")}
        )
        assert response.status_code == 201, (number, response.text)
    for http in (nodes[0].http(ip=test_ip), nodes[1].http(ip=test_ip)):
        response = http.post(path, token=token, json={"body": "one too many", "client_id": "x"})
        assert response.status_code == 429, response.text
