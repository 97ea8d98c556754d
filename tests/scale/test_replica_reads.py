"""Reads run on a real streaming replica; write-then-read flows never see stale data.

The replica applies WAL half a second late (``recovery_min_apply_delay``), so a read that
went to it right after a write would miss the write: each flow below would fail if
read-your-writes routing did not send it to the primary. Every flow alternates between
two web nodes and keeps no cookies, so the pin has to travel through Redis.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from tests.scale.conftest import wait_for_rotation
from tests.scale.harness import aliases, recovery, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.usefixtures("replica_in_rotation"),
]


def on_replica(replica, scale_db, consultation_id: int) -> bool:
    """Whether the replica has replayed the consultation's row (its apply delay is 500 ms)."""
    rows = replica.query(
        "SELECT count(*) FROM consultations_consultation WHERE id = %s",
        (consultation_id,),
        dbname=scale_db.name,
    )
    return rows[0][0] == 1


def test_get_endpoints_read_from_the_replica(nodes, clinic):
    http = nodes[0].http()
    _, _, token = clinic.patient(http)  # anonymous writes: they pin nobody
    # Endpoints that are not served from the hot-read cache, so they always query.
    for path in ("/api/v1/consultations", "/api/v1/notifications"):
        response = http.get(path, token=token)
        assert response.status_code == 200, response.text
        assert aliases(response).get("replica1", 0) >= 1, (path, response.headers)
        # Checked on the very connection the router handed out, at the end of the request.
        assert recovery(response)["replica1"] == "t", (path, response.headers)
        assert recovery(response).get("default", "f") == "f"


@pytest.fixture(scope="module")
def read_heavy_selects(nodes, clinic, slots, scale_db) -> tuple[Counter, int]:
    """Patients browse: providers, slots, dashboard, their consultations, details, profile.

    Returns the SELECTs per alias and the number of authenticated requests made.
    """
    https = [node.http() for node in nodes]
    patients = []
    for index in range(4):
        http = https[index % 2]
        _, _, token = clinic.patient(http)
        booked = []
        for _ in range(2):
            response = clinic.book(http, token, slots.take())
            assert response.status_code == 201, response.text
            booked.append(response.json()["id"])
        patients.append((token, booked))
    wait_for_rotation(nodes)
    # The bookings' read-your-writes window (5 s) closes: each patient reads the replica again.
    for index, (token, _booked) in enumerate(patients):
        wait_until(
            lambda http=https[index % 2], token=token: (
                "replica1" in aliases(http.get("/api/v1/consultations", token=token))
            ),
            timeout=30,
            interval=0.2,
            what="the read-your-writes window to close",
        )

    selects: Counter[str] = Counter()
    by_endpoint: dict[str, Counter[str]] = {}
    statuses: Counter[int] = Counter()
    requests = 0
    provider_ids = scale_db.provider_ids
    for round_ in range(5):
        for index, (token, booked) in enumerate(patients):
            http = https[(index + round_) % 2]
            for path in (
                "/api/v1/providers",
                f"/api/v1/providers/{provider_ids[round_ % len(provider_ids)]}/slots",
                "/api/v1/dashboard",
                "/api/v1/consultations",
                f"/api/v1/consultations/{booked[0]}",
                f"/api/v1/consultations/{booked[1]}",
                "/api/v1/me",
            ):
                response = http.get(path, token=token)
                requests += 1
                statuses[response.status_code] += 1
                selects.update(aliases(response))
                endpoint = "/".join("{id}" if part.isdigit() else part for part in path.split("/"))
                by_endpoint.setdefault(endpoint, Counter()).update(aliases(response))
    assert set(statuses) == {200}, statuses
    total = sum(selects.values())
    print(
        f"\nread-heavy scenario: {requests} GETs, SELECTs {dict(selects)}: "
        f"{selects['replica1'] / total:.0%} of all SELECTs on the replica"
    )
    return selects, by_endpoint


def test_every_read_endpoint_reads_the_replica(read_heavy_selects):
    """Each endpoint of the scenario ran SELECTs on the replica. The primary still serves
    the first look-up of each token and its user (then cached, see accounts/token_cache.py)
    and the fills of cached lists, which read the primary on purpose (consultations/caching.py).
    Three endpoints read nothing else once the token's user is cached (the caller's profile,
    the cached providers list, a provider's cached open slots, which look the provider up
    only on a miss): their only SELECTs are those first fills, on the primary."""
    _, by_endpoint = read_heavy_selects
    fills_only = {"/api/v1/me", "/api/v1/providers", "/api/v1/providers/{id}/slots"}
    missing = [
        endpoint
        for endpoint, counts in by_endpoint.items()
        if endpoint not in fills_only and not counts["replica1"]
    ]
    assert missing == [], by_endpoint
    for endpoint in fills_only:
        assert set(by_endpoint[endpoint]) <= {"default"}, by_endpoint


def test_read_heavy_scenario_runs_80_percent_of_all_selects_on_the_replica(read_heavy_selects):
    selects, _ = read_heavy_selects
    assert selects["replica1"] / sum(selects.values()) >= 0.8, selects


def test_write_then_read_is_never_stale_across_nodes(nodes, clinic, slots, replica, scale_db):
    a, b = (node.http() for node in nodes)
    stale: Counter[str] = Counter()
    on_primary: Counter[str] = Counter()
    rounds = 5
    provider_tokens = dict(
        clinic.provider_token(a, index) for index in range(len(scale_db.provider_ids))
    )
    for round_ in range(rounds):
        first, second = (a, b) if round_ % 2 == 0 else (b, a)

        # Registration, then login and `me` on the other node.
        email, _ = clinic.register(first)
        token = clinic.login(second, email)
        me = first.get("/api/v1/me", token=token)
        if me.status_code != 200 or me.json()["email"] != email:
            stale["register→me"] += 1

        # A profile change, then `me` on the other node.
        new_name = f"Renamed {round_}"
        assert first.patch("/api/v1/me", token=token, json={"full_name": new_name}).is_success
        me = second.get("/api/v1/me", token=token)
        if me.json()["full_name"] != new_name:
            stale["patch→me"] += 1

        # Booking, then the consultation's detail and the list on the other node.
        response = clinic.book(first, token, slots.take())
        assert response.status_code == 201, response.text
        consultation_id = response.json()["id"]
        provider_id = response.json()["provider"]
        provider_id = provider_id["id"] if isinstance(provider_id, dict) else provider_id
        provider_token = provider_tokens[provider_id]
        detail = second.get(f"/api/v1/consultations/{consultation_id}", token=token)
        if detail.status_code != 200:
            stale["booking→detail"] += 1
        on_primary["booking→detail"] += "replica1" not in aliases(detail)
        listed = second.get("/api/v1/consultations", token=token)
        if consultation_id not in [c["id"] for c in listed.json()["results"]]:
            stale["booking→list"] += 1
        dashboard = first.get("/api/v1/dashboard", token=token)
        if consultation_id not in [c["id"] for c in dashboard.json()["upcoming"]]:
            stale["booking→dashboard"] += 1

        # Control: the replica itself really is behind at this moment.
        rows = replica.query(
            "SELECT count(*) FROM consultations_consultation WHERE id = %s",
            (consultation_id,),
            dbname=scale_db.name,
        )
        stale["control: replica already had the booking"] += rows[0][0]

        # A chat message, then the history: the sender's, and the provider's (another user:
        # their view of the consultation may lag, so the replica is let catch up first;
        # the new message itself must be there at once).
        wait_until(
            lambda consultation_id=consultation_id: on_replica(replica, scale_db, consultation_id),
            timeout=30,
            interval=0.05,
            what="the booking on the replica",
        )
        sent = first.post(
            f"/api/v1/consultations/{consultation_id}/messages",
            token=token,
            json={"body": f"hello {round_}", "client_id": f"scale-{round_}-{consultation_id}"},
        )
        assert sent.status_code == 201, sent.text
        message_id = sent.json()["id"]
        for reader, reader_token, flow in (
            (second, token, "message→history"),
            (first, provider_token, "message→provider's history"),
        ):
            history = reader.get(
                f"/api/v1/consultations/{consultation_id}/messages", token=reader_token
            )
            if history.status_code != 200 or message_id not in [
                m["id"] for m in history.json()["results"]
            ]:
                stale[flow] += 1
    print(f"\nstale reads: {dict(stale) or 0}; reads pinned to the primary: {dict(on_primary)}")
    assert stale["control: replica already had the booking"] < rounds, (
        "the replica was never behind: this test would not notice a stale read"
    )
    del stale["control: replica already had the booking"]
    assert not +stale, stale


def test_a_cache_fill_after_a_write_does_not_keep_stale_data(nodes, clinic, replica, scale_db):
    """Another patient's slot list must not keep showing a booked slot once the replica has
    the booking: an entry filled from a lagging replica would serve it for its whole TTL."""
    a, b = (node.http() for node in nodes)
    provider_id = scale_db.provider_ids[-1]
    _, _, booker = clinic.patient(a)
    _, _, browser = clinic.patient(b)  # signing up is anonymous: it pins nobody
    # The day after tomorrow, whole (an explicit window: the default one moves each minute).
    day = (datetime.now(UTC) + timedelta(days=2)).date()
    path = f"/api/v1/providers/{provider_id}/slots?start={day}&end={day + timedelta(days=1)}"

    def open_ids() -> set[int]:
        response = b.get(path + "&limit=100", token=browser)
        assert response.status_code == 200, response.text
        return {s["id"] for s in response.json()["results"]}

    slot_id = max(open_ids())  # the day's last slot: SlotPool hands out the earliest ones
    booked = clinic.book(a, booker, slot_id)
    assert booked.status_code == 201, booked.text
    open_ids()  # refills the cache at once, while the replica is still behind
    wait_until(
        lambda: on_replica(replica, scale_db, booked.json()["id"]),
        timeout=30,
        interval=0.05,
        what="the booking on the replica",
    )
    assert slot_id not in open_ids(), "a booked slot is still listed as open"
