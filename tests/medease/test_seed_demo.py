"""seed_demo: the demo clinic and accounts, idempotent, refused in production."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.demo import DEMO_PASSWORD
from accounts.models import Organization, Role, User
from medease import seeding

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _debug_on(settings):
    # The test runner forces DEBUG off; the demo seeder is a DEBUG-mode tool.
    settings.DEBUG = True


EXPECTED = {
    "staff@demo.medease.test": Role.STAFF,
    **{f"provider{n}@demo.medease.test": Role.PROVIDER for n in (1, 2, 3)},
    **{f"patient{n}@demo.medease.test": Role.PATIENT for n in (1, 2, 3, 4, 5)},
}


def test_seed_creates_the_demo_clinic_and_accounts():
    out = StringIO()
    call_command("seed_demo", stdout=out)
    organization = Organization.objects.get(slug="demo")
    assert organization.name == "Demo Clinic"
    users = {u.email: u for u in User.objects.filter(email__in=EXPECTED)}
    assert {email: u.role for email, u in users.items()} == EXPECTED
    for email, user in users.items():
        assert user.check_password(DEMO_PASSWORD), email
        if user.role in (Role.PROVIDER, Role.STAFF):
            assert user.organization_id == organization.id
    specialties = {
        users[f"provider{n}@demo.medease.test"].provider_profile.specialty for n in (1, 2, 3)
    }
    assert len(specialties) == 3
    assert "patient1@demo.medease.test" in out.getvalue()


def test_seed_is_idempotent():
    call_command("seed_demo", stdout=StringIO())
    before = User.objects.count(), Organization.objects.count()
    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert (User.objects.count(), Organization.objects.count()) == before
    assert "0 created" in out.getvalue()


def test_seed_refuses_with_debug_off_unless_forced(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="refuses to run with DEBUG off"):
        call_command("seed_demo", stdout=StringIO())
    assert not User.objects.exists()
    call_command("seed_demo", "--force", stdout=StringIO())
    assert User.objects.filter(email="patient1@demo.medease.test").exists()


def test_demo_patient_can_log_in(api):
    call_command("seed_demo", stdout=StringIO())
    response = api.post(
        "/api/v1/auth/login",
        {"email": "patient1@demo.medease.test", "password": DEMO_PASSWORD},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["user"]["role"] == "patient"


def test_each_app_seeds_its_own_part_in_installed_apps_order():
    out = StringIO()
    call_command("seed_demo", stdout=out)
    headers = [line.strip() for line in out.getvalue().splitlines() if line.endswith(":")]
    assert headers[:2] == ["accounts:", "consultations:"]
    assert [label for label, _ in seeding.seeders()] == ["accounts", "consultations"]


def test_a_seeder_missing_what_it_needs_says_so():
    with pytest.raises(LookupError, match=r"'providers'.*earlier in INSTALLED_APPS"):
        seeding.SeedContext().require("providers")
