#!/usr/bin/env python
"""`make cluster-smoke`: through nginx, a patient books and chats with their provider while
the two are connected to different web nodes (the message crosses the Redis channel layer).

Uses the demo accounts of `make cluster`. Bounded: every wait has a timeout. Exits 0 and
prints what happened, or exits 1 saying which step failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

import httpx
from websockets.asyncio.client import connect

BASE = os.environ.get("CLUSTER_URL", f"http://127.0.0.1:{os.environ.get('CLUSTER_PORT', '8080')}")
PASSWORD = "medease-demo-pass"  # noqa: S105 - the public demo credential
PATIENT = "patient1@demo.medease.test"
PROVIDER = "provider1@demo.medease.test"


def step(message: str) -> None:
    print(f"[smoke] {message}", flush=True)


def login(client: httpx.Client, email: str) -> str:
    response = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    response.raise_for_status()
    return response.json()["token"]


async def open_socket(client: httpx.Client, token: str, consultation_id: int):
    ticket = client.post("/api/v1/ws-ticket", headers={"Authorization": f"Bearer {token}"})
    ticket.raise_for_status()
    url = BASE.replace("http", "ws", 1)
    socket = await asyncio.wait_for(
        connect(f"{url}/ws/consultations/{consultation_id}/?ticket={ticket.json()['ticket']}"),
        timeout=10,
    )
    return socket, socket.response.headers.get("X-Served-By", "?")


async def receive_message(socket, *, body: str) -> dict:
    while True:
        event = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
        if event.get("type") == "message" and event["message"]["body"] == body:
            return event["message"]


async def main() -> None:
    with httpx.Client(base_url=BASE, timeout=30) as client:
        patient, provider = login(client, PATIENT), login(client, PROVIDER)
        as_patient = {"Authorization": f"Bearer {patient}"}
        provider_id = client.get("/api/v1/me", headers={"Authorization": f"Bearer {provider}"})
        provider_id = provider_id.json()["id"]
        slots = client.get(f"/api/v1/providers/{provider_id}/slots", headers=as_patient)
        slots.raise_for_status()
        if not slots.json()["results"]:
            raise SystemExit("no open slot for provider1 in the next 7 days")
        slot = slots.json()["results"][0]
        booked = client.post(
            "/api/v1/consultations",
            headers=as_patient,
            json={"slot": slot["id"], "reason": "cluster smoke test"},
        )
        if booked.status_code != 201:
            raise SystemExit(f"booking failed: {booked.status_code} {booked.text}")
        consultation = booked.json()["id"]
        step(
            f"patient booked consultation {consultation} at {slot['start']} "
            f"(served by {booked.headers.get('X-Served-By')})"
        )
        detail = client.get(f"/api/v1/consultations/{consultation}", headers=as_patient)
        detail.raise_for_status()
        step(f"and reads it back at once: {detail.json()['status']} (read-your-writes)")

        # Round robin alternates the nodes; reconnect until the two are on different ones.
        patient_socket, patient_node = await open_socket(client, patient, consultation)
        for _ in range(10):
            provider_socket, provider_node = await open_socket(client, provider, consultation)
            if provider_node != patient_node:
                break
            await provider_socket.close()
            # Each attempt is two requests (ticket, handshake): shift the round robin by one.
            client.get("/health/live")
        else:
            raise SystemExit(f"both sockets landed on {patient_node}: is nginx balancing?")
        step(f"patient's websocket on {patient_node}, provider's on {provider_node}")

        hello = f"Hello doctor ({uuid.uuid4().hex[:6]})"
        await patient_socket.send(
            json.dumps({"type": "message.send", "body": hello, "client_id": uuid.uuid4().hex})
        )
        received = await receive_message(provider_socket, body=hello)
        step(f"provider received message {received['id']} sent on the other node: {hello!r}")
        reply = f"Hello patient ({uuid.uuid4().hex[:6]})"
        await provider_socket.send(
            json.dumps({"type": "message.send", "body": reply, "client_id": uuid.uuid4().hex})
        )
        received = await receive_message(patient_socket, body=reply)
        step(f"patient received the reply {received['id']}: {reply!r}")
        history = client.get(f"/api/v1/consultations/{consultation}/messages", headers=as_patient)
        bodies = [m["body"] for m in history.json()["results"]]
        assert hello in bodies and reply in bodies, bodies
        step("both messages are in the history: OK")
        await patient_socket.close()
        await provider_socket.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (httpx.HTTPError, OSError, TimeoutError, AssertionError) as exc:
        print(f"[smoke] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
