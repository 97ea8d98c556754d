"""Data for the scale tests, written through the services (run inside a Django subprocess
pointed at the scale database; see conftest.py)."""

from __future__ import annotations

import json
import uuid
from datetime import time

PASSWORD = "scale-test-password-9"


def seed(*, providers: int = 4) -> dict:
    from accounts import services as account_services
    from accounts.models import Role
    from consultations import services as consultation_services
    from consultations.slotting import Window

    tag = uuid.uuid4().hex[:8]
    organization = account_services.organization_create(
        name=f"Scale Clinic {tag}", slug=f"scale-{tag}", timezone_name="UTC"
    )
    staff = account_services.user_create(
        email=f"staff-{tag}@scale.test",
        password=PASSWORD,
        full_name="Scale Staff",
        role=Role.STAFF,
        organization=organization,
    )
    made = []
    for index in range(providers):
        provider = account_services.user_create(
            email=f"provider{index}-{tag}@scale.test",
            password=PASSWORD,
            full_name=f"Dr. Scale {index}",
            role=Role.PROVIDER,
            organization=organization,
            specialty=("General Practice", "Dermatology")[index % 2],
        )
        # Every day 06:00-22:00 UTC: plenty of future slots whenever the tests run.
        consultation_services.availability_replace(
            provider=provider,
            windows=[Window(day, time(6), time(22)) for day in range(7)],
        )
        made.append({"id": provider.pk, "email": provider.email})
    return {
        "organization": organization.pk,
        "staff": {"id": staff.pk, "email": staff.email},
        "providers": made,
        "password": PASSWORD,
    }


if __name__ == "__main__":  # pragma: no cover - run through harness.run_django
    print(json.dumps(seed()))
