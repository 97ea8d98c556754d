"""Role checks for the API and the staff console's permission policy."""

from __future__ import annotations

from rest_framework.permissions import BasePermission

# What clinic staff may do in the admin console. Scoping to their own organization is
# done by each ModelAdmin's queryset (medease.admin.OrganizationScopedAdmin).
STAFF_CONSOLE_PERMISSIONS: dict[str, set[str]] = {
    "accounts": {
        "view_organization",
        "change_organization",
        "view_user",
        "add_user",
        "change_user",
        "view_providerprofile",
        "change_providerprofile",
        "view_patientprofile",
    },
    # Clinic core: consultations are changed only through the admin actions (services);
    # availability is edited inline on the provider.
    "consultations": {
        "view_consultation",
        "change_consultation",
        "view_queueentry",
        "view_medicalrecordentry",
        "view_availability",
        "add_availability",
        "change_availability",
        "delete_availability",
        "view_availabilityexception",
        "add_availabilityexception",
        "change_availabilityexception",
        "delete_availabilityexception",
    },
    # Documents and images of the clinic's consultations and records, read-only.
    "attachments": {"view_attachment"},
    # The PHI audit log, read-only.
    "medease": {"view_auditevent"},
}


def staff_console_allows(perm: str) -> bool:
    app_label, _, codename = perm.partition(".")
    return codename in STAFF_CONSOLE_PERMISSIONS.get(app_label, set())


def staff_console_allows_app(app_label: str) -> bool:
    return bool(STAFF_CONSOLE_PERMISSIONS.get(app_label))


class IsPatient(BasePermission):
    message = "Only patients may do this."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_patient)


class IsProviderOrStaff(BasePermission):
    message = "Only providers and clinic staff may do this."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.role in ("provider", "staff"))
