"""Demo accounts for ``manage.py seed_demo``: the Demo Clinic, its staff, providers, patients.

Provides to later seeders (see medease/seeding.py) ``organization``, ``staff``, ``providers``
and ``patients``: only the demo accounts themselves, never other users of the demo clinic,
so that what later seeders add lands on demo data alone.
"""

from __future__ import annotations

from accounts import services
from accounts.models import Organization, Role, User
from medease.seeding import SeedContext

DEMO_PASSWORD = "medease-demo-pass"  # noqa: S105 - public demo credential by design
DEMO_DOMAIN = "demo.medease.test"
DEMO_ORG = {"slug": "demo", "name": "Demo Clinic", "timezone_name": "America/New_York"}
DEMO_STAFF = ("staff", "Sam Staff")
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


def _ensure_user(context: SeedContext, **fields) -> User | None:
    """The demo account with this email, created if missing.

    None when the address is taken by an account that is not the demo one (another role or
    clinic, or deactivated): it is left alone and later seeders skip it.
    """
    email = fields["email"]
    context.logins.append(email)
    user = User.objects.filter(email=email).first()
    if user is None:
        user = services.user_create(password=DEMO_PASSWORD, validate=False, **fields)
        context.created += 1
        context.progress(f"created {user.role} {email}")
        return user
    context.existing += 1
    organization = fields.get("organization")
    is_demo = (
        user.is_active
        and user.role == fields["role"]
        and user.organization_id == (organization.pk if organization else None)
    )
    if not is_demo:
        context.progress(f"left {email} alone: it is not the demo account")
        return None
    return user


def seed_demo(*, context: SeedContext) -> None:
    """Create whatever part of the demo clinic and its accounts is missing."""
    context.login_password = DEMO_PASSWORD
    organization = Organization.objects.filter(slug=DEMO_ORG["slug"]).first()
    if organization is None:
        organization = services.organization_create(**DEMO_ORG)
        context.progress(f"created organization {organization.name}")
    local, name = DEMO_STAFF
    staff = _ensure_user(
        context,
        email=f"{local}@{DEMO_DOMAIN}",
        full_name=name,
        role=Role.STAFF,
        organization=organization,
        timezone_name=organization.timezone,
    )
    providers = [
        _ensure_user(
            context,
            email=f"{local}@{DEMO_DOMAIN}",
            full_name=name,
            role=Role.PROVIDER,
            organization=organization,
            timezone_name=organization.timezone,
            specialty=specialty,
            bio=f"{specialty} at the Demo Clinic.",
        )
        for local, name, specialty in DEMO_PROVIDERS
    ]
    patients = [
        _ensure_user(
            context,
            email=f"{local}@{DEMO_DOMAIN}",
            full_name=name,
            role=Role.PATIENT,
            timezone_name="Europe/London",
        )
        for local, name in DEMO_PATIENTS
    ]
    context.provide("organization", organization)
    context.provide("staff", staff)
    context.provide("providers", [user for user in providers if user is not None])
    context.provide("patients", [user for user in patients if user is not None])
