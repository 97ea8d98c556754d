"""Fill a PostgreSQL database with a large clinic network, fast, to look at query plans at size.

    manage.py fill_network                       # 200 providers, 100k patients, 1M, 10M
    manage.py fill_network --providers 4 --patients 50 --consultations 300 --messages 2000

What it writes (on top of whatever is there, e.g. ``seed_demo``), all through ``COPY`` with
every index and constraint in place, then ``ANALYZE``:

* organizations (about 20 providers each, in a few time zones), one staff member each,
  providers with weekly availability (Mon-Fri 09-12 and 13-17 local) and profiles, patients
  with profiles; one precomputed password hash for every account (``--password``);
* the slots that availability materializes, from ``--days`` ago to ``--days-ahead`` ahead
  (built by ``consultations.slotting``, so the slot job finds them already right);
* consultations on those slots, chosen at random (exactly ``--consultations``): past ones
  completed, cancelled, no-show or walk-ins, the current one in progress, future ones
  scheduled or cancelled; one consultation per slot, so the slot and no-overlap
  constraints hold; a few patients have hundreds, most a handful;
* messages (exactly ``--messages``), in the monthly partitions that
  ``messaging.partitions`` creates, with their idempotency records; most chats short, a few
  of hundreds of messages; read markers of both sides (some unread), and record entries for
  some completed consultations.

Rows go in chronological order, so ids grow with time as they do in production.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from accounts.models import Organization, Role
from consultations.lifecycle import ConsultationStatus
from consultations.slotting import Window, slot_times
from messaging.partitions import ensure_partitions, month_start, next_month

TIMEZONES = ("America/New_York", "Europe/Paris", "Europe/London", "America/Chicago", "UTC")
SPECIALTIES = (
    "General Practice",
    "Dermatology",
    "Pediatrics",
    "Cardiology",
    "Psychiatry",
    "Endocrinology",
)
WINDOWS = [Window(d, wall(9), wall(12)) for d in range(5)] + [
    Window(d, wall(13), wall(17)) for d in range(5)
]
REASONS = ("Follow-up", "Persistent cough", "Skin rash", "Prescription renewal", "Check-up", "")
PHRASES = (
    "Hello, I have a question about my prescription.",
    "Thanks, see you at the appointment.",
    "Could you send me the lab results?",
    "The rash is better since yesterday.",
    "Please take it twice a day with food.",
    "I will be a few minutes late.",
    "Noted, I have updated your file.",
    "Is it normal to feel tired after the new dose?",
)
# Consultation tables written here, with the sequence each explicit id must move on.
TABLES = (
    "accounts_organization",
    "accounts_user",
    "consultations_availability",
    "consultations_slot",
    "consultations_consultation",
    "messaging_messageclientid",
    "messaging_readmarker",
    "consultations_medicalrecordentry",
)
ANALYZE = (
    *TABLES,
    "accounts_patientprofile",
    "accounts_providerprofile",
    "messaging_message",
)
FLUSH_CONSULTATIONS = 20_000


def ts(moment: datetime) -> str:
    return moment.isoformat()


@dataclass
class Provider:
    pk: int
    organization: int
    tz: str
    minutes: int


@dataclass
class Ids:
    """The next explicit id of each table (COPY writes ids itself; sequences catch up last)."""

    next: dict[str, int] = field(default_factory=dict)

    def take(self, table: str) -> int:
        value = self.next[table]
        self.next[table] = value + 1
        return value


@dataclass
class Buffers:
    slots: list[str] = field(default_factory=list)
    consultations: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    client_ids: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)


class Command(BaseCommand):
    help = "Fill the (PostgreSQL) database with a large clinic network for query plans at size."

    def add_arguments(self, parser):
        parser.add_argument("--providers", type=int, default=200)
        parser.add_argument("--patients", type=int, default=100_000)
        parser.add_argument("--consultations", type=int, default=1_000_000)
        parser.add_argument("--messages", type=int, default=10_000_000)
        parser.add_argument(
            "--providers-per-organization", type=int, default=20, help="clinic size"
        )
        parser.add_argument("--days", type=int, default=730, help="days of slots in all")
        parser.add_argument(
            "--days-ahead",
            type=int,
            default=settings.SLOTS_MATERIALIZE_DAYS,
            help="of which in the future (the slot job's horizon)",
        )
        parser.add_argument("--prefix", default="fill", help="organization slugs, email domain")
        parser.add_argument("--password", default="medease-fill-pass")
        parser.add_argument("--seed", type=int, default=11)

    def handle(self, *args, **options):
        if connection.vendor != "postgresql":
            raise CommandError(
                "fill_network needs PostgreSQL (COPY, the partitioned message table and the "
                "exclusion constraint); set DATABASE_URL to a PostgreSQL database."
            )
        for name in ("providers", "patients", "consultations", "messages", "days"):
            if options[name] < (0 if name in ("consultations", "messages") else 1):
                raise CommandError(f"--{name} is too small.")
        if options["messages"] and not options["consultations"]:
            raise CommandError("Messages need consultations: give --consultations too.")
        prefix = options["prefix"]
        if Organization.objects.filter(slug__startswith=f"{prefix}-").exists():
            raise CommandError(
                f"Organizations {prefix}-* exist already: fill another database or pass "
                "another --prefix."
            )
        self.verbose = options["verbosity"] > 0
        self.rng = random.Random(options["seed"])  # noqa: S311 - sample data, not secrets
        self.now = timezone.now()
        self.started = time.monotonic()
        self.rows = 0
        self.hash = make_password(options["password"])
        connection.ensure_connection()
        with connection.cursor() as cursor:
            # Losing the last commits in a crash costs nothing here; skipping the WAL flush
            # per COPY statement saves time.
            cursor.execute("SET synchronous_commit = off")
            self.ids = Ids(
                {table: self._max_id(cursor, table) + 1 for table in TABLES}
                | {"messaging_message": self._message_next(cursor)}
            )
        providers = self._people(options)
        self._network(options, providers)
        with connection.cursor() as cursor:
            for table in TABLES:
                latest = f'(SELECT COALESCE(MAX(id), 1) FROM "{table}")'  # noqa: S608 - our names
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence(%s, 'id'), {latest})", [table]
                )
            cursor.execute(
                "SELECT setval('messaging_message_id_seq', "
                "(SELECT COALESCE(MAX(id), 1) FROM messaging_message))"
            )
            self._say("ANALYZE ...")
            for table in ANALYZE:
                cursor.execute(f'ANALYZE "{table}"')
        elapsed = time.monotonic() - self.started
        self.stdout.write(
            f"filled {self.rows:,} rows in {elapsed:.0f} s ({self.rows / elapsed:,.0f} rows/s); "
            f"every account's password: {options['password']}"
        )

    # --- helpers -------------------------------------------------------------------------

    def _max_id(self, cursor, table: str) -> int:
        cursor.execute(f'SELECT COALESCE(MAX(id), 0) FROM "{table}"')  # noqa: S608 - our names
        return cursor.fetchone()[0]

    def _message_next(self, cursor) -> int:
        # The shared sequence, not MAX(id): ids it handed out are never reused.
        cursor.execute("SELECT nextval('messaging_message_id_seq')")
        return cursor.fetchone()[0] + 1

    def _say(self, text: str) -> None:
        if self.verbose:
            self.stderr.write(text)
            sys.stderr.flush()

    def _copy(self, table: str, columns: str, lines: list[str]) -> None:
        if not lines:
            return
        with (
            connection.cursor() as cursor,
            cursor.copy(f'COPY "{table}" ({columns}) FROM STDIN') as copy,
        ):
            for start in range(0, len(lines), 50_000):
                copy.write("".join(lines[start : start + 50_000]))
        self.rows += len(lines)
        lines.clear()

    # --- accounts ------------------------------------------------------------------------

    def _people(self, options) -> list[Provider]:
        prefix = options["prefix"]
        domain = f"{prefix}.medease.test"
        count = options["providers"]
        per_org = max(1, options["providers_per_organization"])
        n_orgs = math.ceil(count / per_org)
        orgs = Organization.objects.bulk_create(
            [
                Organization(
                    name=f"{prefix.title()} Clinic {n}",
                    slug=f"{prefix}-{n}",
                    timezone=TIMEZONES[n % len(TIMEZONES)],
                )
                for n in range(n_orgs)
            ]
        )
        joined = ts(self.now - timedelta(days=options["days"]))
        user_columns = (
            "id, password, is_superuser, email, full_name, role, timezone, is_active, "
            "date_joined, credentials_changed_at, organization_id"
        )
        users, provider_profiles, patient_profiles, windows = [], [], [], []
        providers = []

        def user(email, name, role, tz, org) -> int:
            pk = self.ids.take("accounts_user")
            users.append(
                f"{pk}\t{self.hash}\tf\t{email}\t{name}\t{role}\t{tz}\tt\t{joined}\t{joined}"
                f"\t{org if org else chr(92) + 'N'}\n"
            )
            return pk

        for n, org in enumerate(orgs):
            user(f"staff{n}@{domain}", f"Staff {n}", Role.STAFF, org.timezone, org.pk)
        for n in range(count):
            org = orgs[n % n_orgs]
            minutes = (30, 20, 15)[n % 3]
            pk = user(
                f"provider{n}@{domain}", f"Dr. Provider {n}", Role.PROVIDER, org.timezone, org.pk
            )
            providers.append(Provider(pk, org.pk, org.timezone, minutes))
            provider_profiles.append(f"{pk}\t{SPECIALTIES[n % len(SPECIALTIES)]}\t\t{minutes}\n")
            for w in WINDOWS:
                windows.append(
                    f"{self.ids.take('consultations_availability')}\t{w.weekday}"
                    f"\t{w.start_time}\t{w.end_time}\t{pk}\n"
                )
        first_patient = self.ids.next["accounts_user"]
        for n in range(options["patients"]):
            pk = user(f"patient{n}@{domain}", f"Patient {n}", Role.PATIENT, "UTC", None)
            born = date(1940, 1, 1) + timedelta(days=self.rng.randrange(80 * 365))
            registered = orgs[n % n_orgs].pk if n % 4 == 0 else "\\N"
            patient_profiles.append(f"{pk}\t{born}\t+1555{n:07d}\t\\N\t{registered}\n")
        self.patients = (first_patient, options["patients"])
        self._copy("accounts_user", user_columns, users)
        self._copy(
            "accounts_providerprofile",
            "user_id, specialty, bio, consultation_minutes",
            provider_profiles,
        )
        self._copy(
            "accounts_patientprofile",
            "user_id, date_of_birth, phone, deleted_at, registered_by_organization_id",
            patient_profiles,
        )
        self._copy(
            "consultations_availability",
            "id, weekday, start_time, end_time, provider_id",
            windows,
        )
        self._say(f"{len(orgs)} organizations, {count} providers, {options['patients']} patients")
        return providers

    def _patient(self) -> int:
        # Skewed: the first patients have hundreds of consultations, most a handful.
        first, count = self.patients
        return first + min(count - 1, int(count * self.rng.random() ** 1.6))

    # --- slots, consultations, messages ---------------------------------------------------

    def _grid(self, tz: str, minutes: int, day: date) -> list[tuple[datetime, datetime]]:
        key = (tz, minutes, day)
        cached = self.grids.get(key)
        if cached is None:
            cached = list(
                slot_times(
                    windows=WINDOWS,
                    exceptions=[],
                    tz=ZoneInfo(tz),
                    first_day=day,
                    days=1,
                    minutes=minutes,
                )
            )
            self.grids[key] = cached
        return cached

    def _network(self, options, providers: list[Provider]) -> None:
        self.grids: dict[tuple, list] = {}
        last_day = (self.now + timedelta(days=options["days_ahead"])).date()
        first_day = last_day - timedelta(days=options["days"] - 1)
        days = [first_day + timedelta(days=n) for n in range(options["days"])]
        total_slots = sum(len(self._grid(p.tz, p.minutes, day)) for day in days for p in providers)
        wanted = options["consultations"]
        if wanted > total_slots:
            raise CommandError(
                f"{wanted} consultations do not fit in {total_slots} slots: give more "
                "--providers or --days."
            )
        # Bookings (and their first messages) come up to 30 days before the first slot.
        earliest = first_day - timedelta(days=31)
        months = 0
        month = month_start(earliest)
        while month <= month_start(self.now.date()):
            months, month = months + 1, next_month(month)
        created = ensure_partitions(
            months_ahead=months + settings.MESSAGING_PARTITION_MONTHS_AHEAD, today=earliest
        )
        self._say(f"{len(created)} message partitions created; {total_slots:,} slots")
        self.goal = (total_slots, wanted, options["messages"])
        self.done = [0, 0, 0]
        slots_left, consultations_left = total_slots, wanted
        messages_left = options["messages"]
        buffers = Buffers()
        for day in days:
            for provider in providers:
                for start, end in self._grid(provider.tz, provider.minutes, day):
                    slot = self.ids.take("consultations_slot")
                    made = ts(min(start - timedelta(days=options["days_ahead"]), self.now))
                    buffers.slots.append(f"{slot}\t{ts(start)}\t{ts(end)}\t{made}\t{provider.pk}\n")
                    # Selection sampling: exactly `wanted` slots, each equally likely.
                    take = self.rng.random() * slots_left < consultations_left
                    slots_left -= 1
                    if not take:
                        continue
                    share = messages_left / consultations_left
                    count = self._chat_length(share) if consultations_left > 1 else messages_left
                    count = min(count, messages_left)
                    consultations_left -= 1
                    messages_left -= count
                    self._consultation(buffers, provider, slot, start, end, count)
            if len(buffers.consultations) >= FLUSH_CONSULTATIONS:
                self._flush(buffers)
        self._flush(buffers)

    def _chat_length(self, mean: float) -> int:
        roll = self.rng.random()
        if roll < 0.35 or mean <= 0:
            return 0  # no chat at all
        if roll < 0.3535:
            return int(mean * self.rng.uniform(30, 100))  # a long-running conversation
        return int(self.rng.expovariate(1 / (mean / 0.64)) + 0.5)

    def _consultation(self, buffers, provider, slot, start, end, messages) -> None:
        rng = self.rng
        pk = self.ids.take("consultations_consultation")
        patient = self._patient()
        booked = min(start - timedelta(hours=rng.uniform(2, 24 * 30)), self.now)  # < 31 days
        kind, slot_id = "booked", slot
        started = completed = cancelled = no_show = joined_p = joined_d = None
        notes = ""
        cancelled_by = None
        if end <= self.now:
            roll = rng.random()
            if roll < 0.04:
                status, kind, slot_id, booked = "completed", "walk_in", None, start
            elif roll < 0.14:
                status = ConsultationStatus.CANCELLED
            elif roll < 0.21:
                status = ConsultationStatus.NO_SHOW
            else:
                status = ConsultationStatus.COMPLETED
        elif start <= self.now:
            status = ConsultationStatus.IN_PROGRESS
        else:
            status = (
                ConsultationStatus.CANCELLED
                if rng.random() < 0.08
                else ConsultationStatus.SCHEDULED
            )
        if status in ("completed", "in_progress"):
            joined_p = start + timedelta(seconds=rng.randrange(-120, 300))
            joined_d = start + timedelta(seconds=rng.randrange(0, 240))
            started = max(joined_p, joined_d)
            if status == "completed":
                completed = end + timedelta(seconds=rng.randrange(-300, 600))
                notes = "Seen; plan discussed."
        elif status == "cancelled":
            cancelled = booked + (min(start, self.now) - booked) * rng.random()
            cancelled_by = patient
        elif status == "no_show":
            no_show = start + timedelta(minutes=15)
        null = "\\N"

        def opt(value):
            return null if value is None else ts(value) if isinstance(value, datetime) else value

        buffers.consultations.append(
            f"{pk}\t{kind}\t{status}\t{REASONS[pk % len(REASONS)]}\t{notes}\t{ts(start)}"
            f"\t{ts(end)}\t{ts(booked)}\t{opt(started)}\t{opt(completed)}\t{opt(cancelled)}"
            f"\t{opt(no_show)}\t{'' if cancelled is None else 'Cannot make it'}\t\t"
            f"{opt(cancelled_by)}\t{provider.organization}\t{patient}\t{provider.pk}\t{null}"
            f"\t{opt(slot_id)}\t{opt(joined_p)}\t{opt(joined_d)}\t{null}\t{null}\n"
        )
        if status == "completed" and rng.random() < 0.15:
            buffers.records.append(
                f"{self.ids.take('consultations_medicalrecordentry')}\tnote"
                f"\tSeen for {REASONS[pk % len(REASONS)] or 'a visit'}.\t{ts(completed)}"
                f"\t{provider.pk}\t{pk}\t{provider.organization}\t{patient}\t{null}\n"
            )
        if not messages:
            return
        # Messages while the chat is writable (messaging.permissions): from the booking until
        # the consultation closes, never in the future.
        closed = completed or cancelled or no_show or self.now
        first = booked.timestamp()
        span = max(min(closed, self.now).timestamp() - first, 1.0)
        moments = sorted(first + rng.random() * span for _ in range(messages))
        last_ids = {patient: 0, provider.pk: 0}
        chat = []
        for moment in moments:
            mid = self.ids.take("messaging_message")
            sender = patient if rng.random() < 0.5 else provider.pk
            created = ts(datetime.fromtimestamp(min(moment, self.now.timestamp()), UTC))
            client = f"fill-{mid}"
            buffers.messages.append(
                f"{mid}\t{PHRASES[mid % len(PHRASES)]}\t{client}\t{created}\t{null}\t{null}"
                f"\t{pk}\t{sender}\n"
            )
            buffers.client_ids.append(
                f"{self.ids.take('messaging_messageclientid')}\t{client}\t{mid}\t{created}"
                f"\t{sender}\n"
            )
            last_ids[sender] = mid
            chat.append(mid)
        for reader in (patient, provider.pk):
            # Each side has read up to their own last message at least; most read it all.
            behind = 0 if rng.random() < 0.8 else rng.randrange(min(5, len(chat)))
            upto = max(last_ids[reader], chat[-1 - behind])
            buffers.markers.append(
                f"{self.ids.take('messaging_readmarker')}\t{upto}\t{created}\t{null}\t{pk}"
                f"\t{reader}\n"
            )

    def _flush(self, buffers: Buffers) -> None:
        if not buffers.slots:
            return
        done = (len(buffers.slots), len(buffers.consultations), len(buffers.messages))
        self._copy("consultations_slot", 'id, start, "end", created_at, provider_id', buffers.slots)
        self._copy(
            "consultations_consultation",
            "id, kind, status, reason, provider_notes, scheduled_start, scheduled_end, "
            "created_at, started_at, completed_at, cancelled_at, no_show_at, "
            "cancellation_reason, idempotency_key, cancelled_by_id, organization_id, "
            "patient_id, provider_id, rescheduled_from_id, slot_id, patient_joined_at, "
            "provider_joined_at, checked_in_at, checked_in_by_id",
            buffers.consultations,
        )
        self._copy(
            "messaging_message",
            "id, body, client_id, created_at, edited_at, deleted_at, consultation_id, sender_id",
            buffers.messages,
        )
        self._copy(
            "messaging_messageclientid",
            "id, client_id, message_id, message_created_at, sender_id",
            buffers.client_ids,
        )
        self._copy(
            "messaging_readmarker",
            "id, last_read_message_id, read_at, notified_at, consultation_id, user_id",
            buffers.markers,
        )
        self._copy(
            "consultations_medicalrecordentry",
            "id, kind, text, created_at, author_id, consultation_id, organization_id, "
            "patient_id, supersedes_id",
            buffers.records,
        )
        self.done = [a + b for a, b in zip(self.done, done, strict=True)]
        elapsed = time.monotonic() - self.started
        # Messages are most of the work: the ETA follows them (consultations if none).
        part = self.done[2] / self.goal[2] if self.goal[2] else self.done[1] / max(self.goal[1], 1)
        eta = elapsed / part - elapsed if part else 0
        self._say(
            f"slots {self.done[0]:,}/{self.goal[0]:,}  consultations {self.done[1]:,}/"
            f"{self.goal[1]:,}  messages {self.done[2]:,}/{self.goal[2]:,}  "
            f"{self.rows / elapsed:,.0f} rows/s  ETA {eta:,.0f} s"
        )
