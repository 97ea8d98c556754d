"""The audit trail outlives the users it names; a patient's deletion is an anonymization."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.utils.html import escape

from accounts import services
from accounts.models import PatientProfile, Role, User
from medease.audit import audit_log_rows
from medease.models import AuditAction, AuditEvent
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class Request:
    """What audit_log_rows reads of a request."""

    def __init__(self, user) -> None:
        self.user = user
        self.META = {"REMOTE_ADDR": "10.0.0.1"}


def audit(*, by, patient, organization=None) -> None:
    audit_log_rows(
        request=Request(by),
        action=AuditAction.READ,
        object_type="patient_profile",
        rows=[(patient.pk, patient.pk, organization.pk if organization else None)],
    )


def test_deleting_a_user_with_audit_rows_keeps_the_rows_and_their_ids(staff, patient):
    audit(by=staff, patient=patient, organization=staff.organization)
    staff_id = staff.pk
    services.user_delete(user=staff)
    assert not User.objects.filter(pk=staff_id).exists()
    event = AuditEvent.objects.get()
    assert event.user_id == staff_id
    assert event.patient_id == patient.pk


def test_deleting_a_user_in_the_console_with_audit_rows(staff, patient):
    audit(by=staff, patient=patient, organization=staff.organization)
    root = User.objects.create_superuser("root@example.test", PASSWORD)
    console = Client()
    console.force_login(root)
    response = console.post(f"/admin/accounts/user/{staff.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=staff.pk).exists()
    assert AuditEvent.objects.filter(user_id=staff.pk).count() == 1
    # The audit log's console page still lists the event of the deleted user.
    page = console.get("/admin/medease/auditevent/")
    assert page.status_code == 200
    assert page.context["cl"].result_count == 1
    # The deleted user's kept id is shown, the patient (still there) by name.
    assert f"#{staff.pk} (deleted)".encode() in page.content
    assert escape(str(patient)).encode() in page.content


def test_the_audit_log_stays_append_only(staff, patient):
    audit(by=staff, patient=patient)
    for sql in (
        "UPDATE medease_auditevent SET user_id = NULL",
        "DELETE FROM medease_auditevent",
    ):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert AuditEvent.objects.get().user_id == staff.pk


def test_patient_delete_anonymizes_and_keeps_the_trail(api, staff, patient, login):
    audit(by=staff, patient=patient, organization=staff.organization)
    audit(by=patient, patient=patient)
    profile = patient.patient_profile
    profile.phone = "+1 555 0100"
    profile.save()
    token = login(patient)
    email = patient.email

    services.patient_delete(patient=patient)

    stored = User.objects.get(pk=patient.pk)
    assert stored.email != email and "deleted" in stored.email
    assert stored.full_name == "Deleted patient"
    assert not stored.is_active and not stored.has_usable_password()
    profile = PatientProfile.objects.get(user=patient)
    assert profile.deleted_at is not None and profile.phone == ""
    assert AuditEvent.objects.filter(patient_id=patient.pk).count() == 2
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/me").status_code == 401
    api.credentials()
    response = api.post("/api/v1/auth/login", {"email": email, "password": PASSWORD}, format="json")
    assert response.status_code == 401


def test_deleting_a_patient_in_the_console_anonymizes(staff, patient):
    audit(by=staff, patient=patient, organization=staff.organization)
    root = User.objects.create_superuser("root@example.test", PASSWORD)
    console = Client()
    console.force_login(root)
    confirm = console.get(f"/admin/accounts/user/{patient.pk}/delete/")
    assert confirm.status_code == 200
    assert "anonymized" in confirm.content.decode()
    response = console.post(f"/admin/accounts/user/{patient.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    stored = User.objects.get(pk=patient.pk)
    assert not stored.is_active
    assert stored.patient_profile.deleted_at is not None
    assert AuditEvent.objects.filter(patient_id=patient.pk, action=AuditAction.DELETE).exists()


def test_a_patient_is_not_hard_deleted_by_the_service(patient, provider):
    with pytest.raises(Exception, match="anonymized"):
        services.user_delete(user=patient)
    with pytest.raises(Exception, match="Only a patient"):
        services.patient_delete(patient=provider)
    assert User.objects.filter(pk=patient.pk, role=Role.PATIENT).exists()
