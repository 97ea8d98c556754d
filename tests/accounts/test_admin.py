"""The staff console: staff see and edit only their own organization's people."""

from __future__ import annotations

import pytest

from accounts.models import Role, User

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_browser(client, staff):
    client.force_login(staff)
    return client


def test_staff_can_open_the_console(staff_browser):
    assert staff_browser.get("/admin/").status_code == 200


def test_patients_and_providers_cannot_open_the_console(client, patient, provider):
    for user in (patient, provider):
        client.force_login(user)
        response = client.get("/admin/")
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


def test_staff_see_only_their_organizations_people(
    staff_browser, make_user, organization, other_organization
):
    mine = make_user(Role.PROVIDER, organization=organization, full_name="Mine Provider")
    theirs = make_user(Role.PROVIDER, organization=other_organization, full_name="Their Provider")
    page = staff_browser.get("/admin/accounts/user/").content.decode()
    assert mine.email in page
    assert theirs.email not in page
    assert staff_browser.get(f"/admin/accounts/user/{theirs.pk}/change/").status_code in (302, 404)
    assert staff_browser.get(f"/admin/accounts/user/{mine.pk}/change/").status_code == 200


def _provider_change_form(provider, **overrides) -> dict:
    form = {
        "email": provider.email,
        "full_name": "Renamed Provider",
        "role": Role.PROVIDER,
        "timezone": "UTC",
        "is_active": "on",
        "provider_profile-TOTAL_FORMS": "1",
        "provider_profile-INITIAL_FORMS": "1",
        "provider_profile-MIN_NUM_FORMS": "0",
        "provider_profile-MAX_NUM_FORMS": "1",
        "provider_profile-0-user": provider.pk,
        "provider_profile-0-specialty": "Cardiology",
        "provider_profile-0-bio": "",
        "provider_profile-0-consultation_minutes": "30",
    }
    # The scheduling inlines a provider's page also shows: submitted empty.
    for prefix in ("availability_windows", "availability_exceptions"):
        form |= {f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"}
    form.update(overrides)
    return form


def test_staff_edit_keeps_the_organization(
    staff_browser, make_user, organization, other_organization
):
    provider = make_user(Role.PROVIDER, organization=organization)
    response = staff_browser.post(
        f"/admin/accounts/user/{provider.pk}/change/",
        _provider_change_form(provider, organization=other_organization.pk),
    )
    # Everything else is valid, so the form saves; only the organization must not move.
    assert response.status_code == 302, response.content.decode()[:2000]
    provider.refresh_from_db()
    assert provider.full_name == "Renamed Provider"
    assert provider.organization_id == organization.id


def test_staff_cannot_grant_admin(staff_browser, make_user, organization):
    provider = make_user(Role.PROVIDER, organization=organization)
    response = staff_browser.post(
        f"/admin/accounts/user/{provider.pk}/change/",
        _provider_change_form(provider, role=Role.ADMIN),
    )
    assert response.status_code == 200  # "admin" is not a choice for staff: the form is re-shown
    assert "role" in response.context["adminform"].form.errors
    provider.refresh_from_db()
    assert provider.role == Role.PROVIDER
    assert provider.full_name != "Renamed Provider"


def test_staff_add_a_provider_to_their_clinic(staff_browser, organization):
    response = staff_browser.post(
        "/admin/accounts/user/add/",
        {
            "email": "new.doc@example.test",
            "full_name": "New Doc",
            "role": Role.PROVIDER,
            "timezone": "America/New_York",
            "usable_password": "true",
            "password1": "a-long-secure-passphrase-1",
            "password2": "a-long-secure-passphrase-1",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    user = User.objects.get(email="new.doc@example.test")
    assert user.organization_id == organization.id
    assert user.provider_profile.consultation_minutes == 30


def test_staff_cannot_see_tokens(staff_browser):
    assert staff_browser.get("/admin/accounts/authtoken/").status_code == 403


def test_the_console_shows_times_in_the_staff_members_time_zone(client, staff):
    import zoneinfo

    from django.utils import dateformat, formats, timezone

    staff.timezone = "Asia/Tokyo"
    staff.save(update_fields=["timezone"])
    client.force_login(staff)
    page = client.get(f"/admin/accounts/user/{staff.pk}/change/").content.decode()

    def rendered(zone: str) -> str:
        local = timezone.localtime(staff.date_joined, timezone=zoneinfo.ZoneInfo(zone))
        return dateformat.format(local, formats.get_format("DATETIME_FORMAT"))

    # date_joined is shown read-only: in Tokyo time (UTC+9, no DST), not in UTC.
    assert rendered("Asia/Tokyo") in page
    assert rendered("UTC") not in page


def test_staff_viewing_a_patient_in_the_console_is_audited(client, staff, patient):
    from medease.models import AuditEvent

    staff.role = "admin"  # superusers see every user, patients included
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    assert client.get(f"/admin/accounts/user/{patient.pk}/change/").status_code == 200
    event = AuditEvent.objects.get(object_type="patient_profile")
    assert (event.user_id, event.patient_id, event.action) == (staff.pk, patient.pk, "read")
