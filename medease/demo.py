"""Demo data for `manage.py seed_demo`: the Demo Clinic, its staff, providers and patients.

Kept out of the command so other apps' seeding (availability, slots) can extend it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import transaction

from accounts import services as account_services
from accounts.models import Organization, Role, User

DEMO_PASSWORD = "medease-demo-pass"  # noqa: S105 - public demo credential by design
DEMO_DOMAIN = "demo.medease.test"
DEMO_ORG = {"slug": "demo", "name": "Demo Clinic", "timezone_name": "America/New_York"}
DEMO_PROVIDERS = [
    ("provider1", "Dr. Ada Okafor", "General Practice"),
    ("provider2", "Dr. Ben Laurent", "Dermatology"),
    ("provider3", "Dr. Chen Wei", "Pediatrics"),
]
DEMO_PATIENTS = [
    ("patient1", "Paula Patel"),
    ("patient2", "Omar Haddad"),
    ("patient3", "Grace Kim"),
    ("patient4", "Luis Romero"),
    ("patient5", "Maya Cohen"),
]

# Apps that add demo data register a callable here: seeder(organization, progress).
extra_seeders: list[Callable] = []


@dataclass
class SeedResult:
    created: int = 0
    existing: int = 0
    emails: list[str] = field(default_factory=list)


def _ensure_user(result: SeedResult, progress, **kwargs) -> User:
    email = kwargs["email"]
    result.emails.append(email)
    user = User.objects.filter(email=email).first()
    if user is not None:
        result.existing += 1
        return user
    user = account_services.user_create(password=DEMO_PASSWORD, validate=False, **kwargs)
    result.created += 1
    progress(f"created {user.role} {email}")
    return user


@transaction.atomic
def seed(progress: Callable[[str], None] = lambda line: None) -> SeedResult:
    """Create whatever part of the demo data is missing."""
    result = SeedResult()
    organization = Organization.objects.filter(slug=DEMO_ORG["slug"]).first()
    if organization is None:
        organization = account_services.organization_create(**DEMO_ORG)
        progress(f"created organization {organization.name}")
    _ensure_user(
        result,
        progress,
        email=f"staff@{DEMO_DOMAIN}",
        full_name="Sam Staff",
        role=Role.STAFF,
        organization=organization,
        timezone_name=organization.timezone,
    )
    for local, name, specialty in DEMO_PROVIDERS:
        _ensure_user(
            result,
            progress,
            email=f"{local}@{DEMO_DOMAIN}",
            full_name=name,
            role=Role.PROVIDER,
            organization=organization,
            timezone_name=organization.timezone,
            specialty=specialty,
            bio=f"{specialty} at the Demo Clinic.",
        )
    for local, name in DEMO_PATIENTS:
        _ensure_user(
            result,
            progress,
            email=f"{local}@{DEMO_DOMAIN}",
            full_name=name,
            role=Role.PATIENT,
            timezone_name="Europe/London",
        )
    for seeder in extra_seeders:
        seeder(organization=organization, progress=progress)
    return result
