"""A clinic day under Locust (issue 11, point 5): patients, providers and staff of the load
clinic (bench/load/seed.py) use the API the way the apps do, reads dominating.

    locust -f bench/load/locustfile.py --headless -u 200 -r 50 -t 60s \
        --host http://127.0.0.1:8080 --only-summary

Environment: LOAD_ACCOUNTS (the seed's JSON, default var/load/accounts.json), LOAD_TOKENS
(tokens kept between runs, like an app keeps its token; default var/load/tokens.json),
LOAD_SUMMARY (write the summary as JSON there), LOAD_SIGN_IN_SHARE (how often a patient's
"reopen the app" signs in again, 0.7), LOAD_THINK_SECONDS (think time "min,max", 1,4),
LOAD_WALKTHROUGH=1 (each person first does every action of their role once), and
LOAD_P95_MS / LOAD_P99_MS / LOAD_MAX_ERROR_RATE (the thresholds, default 200 / 500 / 0.001).

At the end the run prints its thresholds as pass/fail and exits non-zero when one fails.
The latency thresholds apply to every API request except sign-in: a login verifies an
Argon2 hash (~185 ms of CPU by design, docs/scaling.md) and has its own line. Errors count
every request, sign-in included. A booking answered 409 (someone else took the slot) is
not an error: it is counted on its own line.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from locust import between, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.stats import StatsEntry

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = Path(os.environ.get("LOAD_ACCOUNTS", ROOT / "var" / "load" / "accounts.json"))
TOKENS = Path(os.environ.get("LOAD_TOKENS", ROOT / "var" / "load" / "tokens.json"))
P95_MS = float(os.environ.get("LOAD_P95_MS", "200"))
P99_MS = float(os.environ.get("LOAD_P99_MS", "500"))
MAX_ERROR_RATE = float(os.environ.get("LOAD_MAX_ERROR_RATE", "0.001"))
SIGN_IN_SHARE = float(os.environ.get("LOAD_SIGN_IN_SHARE", "0.7"))
# Each person first walks through every action of their role once (a smoke run).
WALKTHROUGH = os.environ.get("LOAD_WALKTHROUGH") == "1"
THINK = tuple(float(s) for s in os.environ.get("LOAD_THINK_SECONDS", "1,4").split(","))
LOGIN = "POST auth/login"
API = "/api/v1/"

_accounts: dict | None = None
_tokens: dict[str, str] = {}
_next: dict[str, itertools.count] = {}
# Slots this process handed to a booking: two of our patients never pick the same one.
_claimed: set[int] = set()
conflicts: Counter[str] = Counter()
_peak_users = [0]


def accounts() -> dict:
    global _accounts
    if _accounts is None:
        _accounts = json.loads(ACCOUNTS.read_text())
        if TOKENS.exists():
            _tokens.update(json.loads(TOKENS.read_text()))
    return _accounts


def take(role: str) -> tuple[int, dict]:
    """The next account of this role (each simulated user is one person)."""
    pool = accounts()[role]
    index = next(_next.setdefault(role, itertools.count())) % len(pool)
    return index, pool[index]


def client_address(role: str, index: int) -> str:
    """A loopback address per person, sent as X-Forwarded-For: nginx appends its own hop and
    the web nodes (TRUSTED_PROXIES=127.0.0.1) see each person at their own address, as
    they would in a clinic, so per-address limits (sign-in) apply per person. Only a
    header: every packet goes to the cluster on 127.0.0.1."""
    n = index + 1 + {"patients": 0, "providers": 40_000, "staff": 50_000}[role]
    return f"127.{100 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


class ClinicUser(FastHttpUser):
    abstract = True
    role = ""
    # Think time between two actions of one person (LOAD_THINK_SECONDS="min,max").
    wait_time = between(*THINK)

    def on_start(self) -> None:
        self.index, self.account = take(self.role)
        self.headers = {"X-Forwarded-For": client_address(self.role, self.index)}
        # The app opens with the token it kept (its profile first); it signs in when it has
        # none or the server no longer takes it.
        token = _tokens.get(self.account["email"])
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
            with self.client.get(
                f"{API}me", headers=self.headers, name="GET me", catch_response=True
            ) as response:
                if response.status_code == 401:
                    response.success()  # an expired token is not a server error
                    token = None
                elif response.status_code != 200:
                    response.failure(f"{response.status_code}: {response.text[:200]}")
        if token is None:
            self.headers.pop("Authorization", None)
            self.headers["Authorization"] = f"Bearer {self.login()}"

    def login(self) -> str:
        with self.client.post(
            f"{API}auth/login",
            json={"email": self.account["email"], "password": accounts()["password"]},
            headers=self.headers,
            name=LOGIN,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"login {response.status_code}: {response.text[:200]}")
                raise RuntimeError(f"login failed for {self.account['email']}")
            token = response.json()["token"]
        _tokens[self.account["email"]] = token
        return token

    def get(self, path: str, name: str, **params) -> dict | None:
        with self.client.get(
            f"{API}{path}",
            params=params or None,
            headers=self.headers,
            name=f"GET {name}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return None
            return response.json()

    def post(self, path: str, name: str, body: dict, expect: int, **headers) -> dict | None:
        with self.client.post(
            f"{API}{path}",
            json=body,
            headers={**self.headers, **headers},
            name=f"POST {name}",
            catch_response=True,
        ) as response:
            if response.status_code == expect:
                return response.json() if response.content else {}
            if response.status_code == 409 and name == "consultations (book)":
                # The slot went to someone else between the search and the booking.
                code = response.json().get("error", {}).get("code", "?")
                conflicts[code] += 1
                response.success()
                return None
            response.failure(f"{response.status_code}: {response.text[:200]}")
            return None

    def send_message(self, consultation: int) -> None:
        self.post(
            f"consultations/{consultation}/messages",
            "consultations/{id}/messages",
            {
                "body": f"{self.role} says hello {random.randint(1, 10**6)}",
                "client_id": uuid.uuid4().hex,
            },
            201,
        )


class Patient(ClinicUser):
    """Checks the dashboard, searches providers and slots, books, chats, reads notices."""

    role = "patients"
    weight = 16

    def on_start(self) -> None:
        super().on_start()
        self.chat = self.account["chat"]
        self.providers = [p["id"] for p in accounts()["providers"]]
        if WALKTHROUGH:
            for action in (self.dashboard, self.providers_search, self.book, self.history):
                action()
            self.chat_message()
            self.notifications()

    @task(10)
    def dashboard(self) -> None:
        self.get("dashboard", "dashboard")

    @task(4)
    def notifications(self) -> None:
        self.get("notifications", "notifications")

    @task(3)
    def providers_search(self) -> None:
        self.get("providers", "providers")

    @task(6)
    def slots(self) -> None:
        self.search_slots(random.choice(self.providers))

    def search_slots(self, provider: int) -> list[dict]:
        # One day of the next two weeks, from midnight UTC (a day shares one cache entry).
        day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        day += timedelta(days=random.randint(1, 13))
        end = day + timedelta(days=1)
        page = self.get(
            f"providers/{provider}/slots",
            "providers/{id}/slots",
            start=day.isoformat().replace("+00:00", "Z"),
            end=end.isoformat().replace("+00:00", "Z"),
        )
        return page["results"] if page else []

    @task(1)
    def book(self) -> None:
        slots = [
            s for s in self.search_slots(random.choice(self.providers)) if s["id"] not in _claimed
        ]
        if not slots:
            return
        slot = slots[0]["id"]
        _claimed.add(slot)
        self.post(
            "consultations",
            "consultations (book)",
            {"slot": slot, "reason": accounts()["booking_reason"]},
            201,
            **{"Idempotency-Key": uuid.uuid4().hex},
        )

    @task(3)
    def consultations(self) -> None:
        self.get("consultations", "consultations")

    @task(3)
    def consultation(self) -> None:
        self.get(f"consultations/{self.chat}", "consultations/{id}")

    @task(5)
    def history(self) -> None:
        page = self.get(
            f"consultations/{self.chat}/messages", "consultations/{id}/messages", limit=50
        )
        if page and page["results"] and random.random() < 0.3:
            self.post(
                f"consultations/{self.chat}/read",
                "consultations/{id}/read",
                {"message_id": page["results"][-1]["id"]},
                204,
            )

    @task(2)
    def chat_message(self) -> None:
        self.send_message(self.chat)

    @task(1)
    def reopen_app(self) -> None:
        """The app opens again: its profile, or (LOAD_SIGN_IN_SHARE of the time, 0.7 by
        default: one sign-in per ~60 requests, the seeds' one per active user per day)
        sign out and in again."""
        if random.random() >= SIGN_IN_SHARE:
            self.get("me", "me")
            return
        self.post("auth/logout", "auth/logout", {}, 204)
        self.headers.pop("Authorization", None)
        self.headers["Authorization"] = f"Bearer {self.login()}"


class Provider(ClinicUser):
    """Opens the day (dashboard, queue, schedule), sees visits: starts one, chats, writes
    the record, completes it."""

    role = "providers"
    weight = 3

    def on_start(self) -> None:
        super().on_start()
        self.me = self.account["id"]
        self.visit: dict | None = None
        self.steps = 0
        if WALKTHROUGH:
            self.dashboard()
            self.queue()
            self.schedule()

    @task(6)
    def dashboard(self) -> None:
        self.get("dashboard", "dashboard")

    @task(3)
    def queue(self) -> None:
        self.get(f"providers/{self.me}/queue", "providers/{id}/queue")

    @task(5)
    def schedule(self) -> None:
        self.get("consultations", "consultations", status="scheduled")

    @task(2)
    def all_consultations(self) -> None:
        self.get("consultations", "consultations")

    @task(6)
    def visit_step(self) -> None:
        """One step of a visit: start one booked by the run, then chat, read the history and
        the record, write a note, and complete it."""
        if self.visit is None:
            page = self.get("consultations", "consultations", status="scheduled")
            booked = [
                c
                for c in (page or {}).get("results", [])
                if c["reason"] == accounts()["booking_reason"]
            ]
            if not booked:
                return
            visit = booked[0]
            if self.post(f"consultations/{visit['id']}/start", "consultations/{id}/start", {}, 200):
                self.visit, self.steps = visit, 0
            return
        visit, patient = self.visit["id"], self.visit["patient"]
        self.steps += 1
        if self.steps == 1:
            self.get(f"consultations/{visit}", "consultations/{id}")
        elif self.steps == 2:
            self.send_message(visit)
        elif self.steps == 3:
            self.get(f"consultations/{visit}/messages", "consultations/{id}/messages", limit=50)
            self.get(f"patients/{patient}/records", "patients/{id}/records")
        elif self.steps == 4:
            self.post(
                f"patients/{patient}/records",
                "patients/{id}/records",
                {"kind": "note", "text": "Seen today; advised rest.", "consultation": visit},
                201,
            )
        else:
            self.post(
                f"consultations/{visit}/complete",
                "consultations/{id}/complete",
                {"provider_notes": "Completed in the load test."},
                200,
            )
            self.visit = None


class Staff(ClinicUser):
    """Lists the clinic's day."""

    role = "staff"
    weight = 1

    def on_start(self) -> None:
        super().on_start()
        if WALKTHROUGH:
            self.day()

    @task(5)
    def day(self) -> None:
        self.get("consultations", "consultations", status="scheduled")

    @task(3)
    def dashboard(self) -> None:
        self.get("dashboard", "dashboard")

    @task(2)
    def all_consultations(self) -> None:
        page = self.get("consultations", "consultations")
        if page and page["results"]:
            self.get(f"consultations/{random.choice(page['results'])['id']}", "consultations/{id}")


# --- Thresholds ---------------------------------------------------------------------------


def summarize(environment) -> dict:
    stats = environment.stats
    api = StatsEntry(stats, "API (all but sign-in)", "", use_response_times_cache=False)
    rows = []
    for (name, _method), entry in sorted(stats.entries.items()):
        rows.append(
            {
                "name": name,
                "requests": entry.num_requests,
                "failures": entry.num_failures,
                "p50": entry.get_response_time_percentile(0.5),
                "p95": entry.get_response_time_percentile(0.95),
                "p99": entry.get_response_time_percentile(0.99),
            }
        )
        if name != LOGIN:
            api.extend(entry)
    total = stats.total
    requests = total.num_requests
    errors = total.num_failures
    seconds = max(total.last_request_timestamp - total.start_time, 1e-9) if requests else 0
    p95 = api.get_response_time_percentile(0.95) if api.num_requests else 0
    p99 = api.get_response_time_percentile(0.99) if api.num_requests else 0
    error_rate = errors / requests if requests else 1.0
    checks = {
        f"p95 < {P95_MS:g} ms": (p95 < P95_MS, f"{p95:.0f} ms"),
        f"p99 < {P99_MS:g} ms": (p99 < P99_MS, f"{p99:.0f} ms"),
        f"errors < {MAX_ERROR_RATE:.1%}": (error_rate < MAX_ERROR_RATE, f"{error_rate:.3%}"),
    }
    return {
        "users": _peak_users[0],
        "requests": requests,
        "errors": errors,
        "error_rate": error_rate,
        "rps": requests / seconds if seconds else 0.0,
        "api_p50": api.get_response_time_percentile(0.5) if api.num_requests else 0,
        "api_p95": p95,
        "api_p99": p99,
        "booking_conflicts": dict(conflicts),
        "errors_by_kind": {
            f"{e.method} {e.name}: {e.error}"[:200]: e.occurrences for e in stats.errors.values()
        },
        "endpoints": rows,
        "checks": {name: {"ok": ok, "value": value} for name, (ok, value) in checks.items()},
        "passed": all(ok for ok, _ in checks.values()),
    }


def print_summary(summary: dict) -> None:
    print(f"\n{'endpoint':44} {'requests':>8} {'fail':>5} {'p50':>6} {'p95':>6} {'p99':>6}")
    for row in summary["endpoints"]:
        print(
            f"{row['name'][:44]:44} {row['requests']:>8} {row['failures']:>5} "
            f"{row['p50']:>6.0f} {row['p95']:>6.0f} {row['p99']:>6.0f}"
        )
    print(
        f"\n{summary['users']} users, {summary['requests']} requests, {summary['rps']:.1f} req/s; "
        f"API p50 {summary['api_p50']:.0f} ms, p95 {summary['api_p95']:.0f} ms, "
        f"p99 {summary['api_p99']:.0f} ms; bookings that lost their slot (409): "
        f"{sum(summary['booking_conflicts'].values())}"
    )
    for kind, count in summary["errors_by_kind"].items():
        print(f"  error x{count}: {kind}")
    for name, check in summary["checks"].items():
        print(f"  {'PASS' if check['ok'] else 'FAIL'}  {name}: {check['value']}")
    print("thresholds: " + ("PASS" if summary["passed"] else "FAIL"), flush=True)


@events.spawning_complete.add_listener
def remember_users(user_count: int, **kwargs) -> None:
    _peak_users[0] = max(_peak_users[0], user_count)


@events.quitting.add_listener
def check_thresholds(environment, **kwargs) -> None:
    summary = summarize(environment)
    print_summary(summary)
    if os.environ.get("LOAD_SUMMARY"):
        Path(os.environ["LOAD_SUMMARY"]).write_text(json.dumps(summary))
    if _tokens:
        TOKENS.parent.mkdir(parents=True, exist_ok=True)
        TOKENS.write_text(json.dumps(_tokens))
    if not summary["passed"]:
        environment.process_exit_code = 1
