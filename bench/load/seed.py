#!/usr/bin/env python
"""Accounts for the clinic-day load test (bench/load/): one clinic of its own, its staff,
providers with hours every day and patients, each patient with one open consultation to
chat in. Writes the accounts as JSON for the locustfile.

    DATABASE_URL=... REDIS_URL=... python bench/load/seed.py --patients 2000 --providers 20 \
        --out var/load/accounts.json

Run against the database the servers use (bench/load/run.py runs it with the cluster's
environment). Safe to run again: existing accounts are kept; what an earlier run left
(bookings still scheduled, visits in progress) is closed so that every run starts from the
same day and slots do not run out. Touches nothing outside the load clinic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time as clock
from datetime import time, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "load.medease.test"
ORG = {"slug": "load-clinic", "name": "Load Test Clinic", "timezone_name": "UTC"}
PASSWORD = "medease-load-pass-7"  # noqa: S105 - bench accounts on a bench clinic only
SPECIALTIES = ("General Practice", "Dermatology", "Pediatrics", "Cardiology", "Psychiatry")
# The reasons tell the locustfile's providers which visits they may start and complete
# (bookings made by the run), and which ones stay open for the patient's chat.
CHAT_REASON = "Load chat"
BOOKING_REASON = "Load booking"
HOURS = (time(7), time(19))


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def seed(*, patients: int, providers: int, staff: int, tokens: bool) -> dict:
    from django.contrib.auth.hashers import make_password
    from django.db import transaction
    from django.utils import timezone

    from accounts import services as accounts
    from accounts.models import Organization, Role, User
    from consultations import services as clinic
    from consultations.models import Consultation, ConsultationKind, ConsultationStatus, Slot
    from consultations.slotting import Window

    started = clock.monotonic()
    organization = Organization.objects.filter(slug=ORG["slug"]).first()
    if organization is None:
        organization = accounts.organization_create(**ORG)

    def ensure(email: str, **fields) -> User:
        user = User.objects.filter(email=email).first()
        if user is None:
            user = accounts.user_create(email=email, password=None, validate=False, **fields)
        return user

    staff_users = [
        ensure(
            f"staff{n}@{DOMAIN}",
            full_name=f"Load Staff {n}",
            role=Role.STAFF,
            organization=organization,
        )
        for n in range(staff)
    ]
    provider_users = []
    for n in range(providers):
        provider = ensure(
            f"provider{n}@{DOMAIN}",
            full_name=f"Dr. Load {n}",
            role=Role.PROVIDER,
            organization=organization,
            specialty=SPECIALTIES[n % len(SPECIALTIES)],
            consultation_minutes=15,
        )
        if not provider.availability_windows.exists():
            clinic.availability_replace(
                provider=provider, windows=[Window(day, *HOURS) for day in range(7)]
            )
        clinic.slots_materialize(provider=provider)
        provider_users.append(provider)
    patient_users = [
        ensure(f"patient{n}@{DOMAIN}", full_name=f"Load Patient {n}", timezone_name="UTC")
        for n in range(patients)
    ]
    # One Argon2 hash for every bench account: the logins still pay the real verification
    # cost, the seed does not pay 2,000 hashes.
    User.objects.filter(email__endswith=f"@{DOMAIN}").update(password=make_password(PASSWORD))

    now = timezone.now()
    mine = Consultation.objects.filter(organization=organization)
    with transaction.atomic():
        # Close what an earlier run left open: its bookings free their slots again.
        mine.filter(
            reason=BOOKING_REASON,
            status__in=(ConsultationStatus.SCHEDULED, ConsultationStatus.IN_PROGRESS),
        ).update(status=ConsultationStatus.CANCELLED, cancelled_at=now)
        # Chat consultations whose time has passed: replaced by new ones below.
        mine.filter(reason=CHAT_REASON, scheduled_start__lt=now + timedelta(hours=1)).exclude(
            status__in=(ConsultationStatus.CANCELLED, ConsultationStatus.COMPLETED)
        ).update(status=ConsultationStatus.CANCELLED, cancelled_at=now)
        chat = dict(
            mine.filter(reason=CHAT_REASON, status=ConsultationStatus.SCHEDULED).values_list(
                "patient_id", "pk"
            )
        )
        # Chat visits from the last days of the horizon, so that the run's bookings (which
        # search the days ahead) find the early days free.
        free = list(
            Slot.objects.filter(provider__in=provider_users, start__gt=now + timedelta(days=14))
            .exclude(
                pk__in=Consultation.objects.exclude(status=ConsultationStatus.CANCELLED)
                .filter(slot__isnull=False)
                .values("slot_id")
            )
            .order_by("-start", "provider_id")
            .values_list("pk", "provider_id", "start", "end")
        )
        rows = []
        for patient in patient_users:
            if patient.pk in chat:
                continue
            slot_id, provider_id, start, end = free.pop()
            rows.append(
                Consultation(
                    patient=patient,
                    provider_id=provider_id,
                    organization=organization,
                    slot_id=slot_id,
                    kind=ConsultationKind.BOOKED,
                    reason=CHAT_REASON,
                    scheduled_start=start,
                    scheduled_end=end,
                    status=ConsultationStatus.SCHEDULED,
                )
            )
        for row in Consultation.objects.bulk_create(rows):
            chat[row.patient_id] = row.pk
    # The apps' tokens from an earlier sign-in (the day's sign-ins are part of the load mix):
    # a run's users start signed in instead of all signing in at once.
    issued = {}
    if tokens:
        for user in [*staff_users, *provider_users, *patient_users]:
            issued[user.email] = accounts.token_issue(user=user, user_agent="load seed")[0]
    return {
        "tokens": issued,
        "password": PASSWORD,
        "organization": organization.pk,
        "chat_reason": CHAT_REASON,
        "booking_reason": BOOKING_REASON,
        "staff": [{"id": u.pk, "email": u.email} for u in staff_users],
        "providers": [{"id": u.pk, "email": u.email} for u in provider_users],
        "patients": [{"id": u.pk, "email": u.email, "chat": chat[u.pk]} for u in patient_users],
        "seconds": round(clock.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--providers", type=int, default=20)
    parser.add_argument("--staff", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "load" / "accounts.json")
    parser.add_argument(
        "--tokens",
        type=Path,
        default=None,
        help="Also issue a token per account and write them there (JSON {email: token}).",
    )
    args = parser.parse_args()
    setup_django()
    data = seed(
        patients=args.patients, providers=args.providers, staff=args.staff, tokens=bool(args.tokens)
    )
    issued = data.pop("tokens")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data))
    if args.tokens:
        args.tokens.write_text(json.dumps(issued))
    print(
        f"seeded {len(data['patients'])} patients, {len(data['providers'])} providers, "
        f"{len(data['staff'])} staff in {data['seconds']} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
