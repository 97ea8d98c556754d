"""Admin helpers (scoping by organization or by the model's visibility policy) and the audit
log's console page."""

from __future__ import annotations

from django.contrib import admin

from medease.models import AuditEvent


class OrganizationScopedAdmin(admin.ModelAdmin):
    """Non-superusers see and edit only rows of their own organization.

    ``organization_field`` is the lookup path from the model to its organization id.
    """

    organization_field = "organization"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{self.organization_field: request.user.organization_id})


class VisibleToAdmin(admin.ModelAdmin):
    """The console shows the rows the model's own policy (``objects.visible_to(user)``) lets
    the signed-in user see: the same rule as the API and the websocket. Superusers see all;
    an object outside it answers like a missing one."""

    def get_queryset(self, request):
        return super().get_queryset(request).visible_to(request.user)


@admin.register(AuditEvent)
class AuditEventAdmin(OrganizationScopedAdmin):
    """The PHI audit log: read-only, each clinic's staff see their clinic's events."""

    list_display = [
        "created_at",
        "who",
        "action",
        "object_type",
        "object_id",
        "whose",
        "ip",
        "request_id",
    ]
    list_filter = ["action", "object_type", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["user__email", "patient__email", "object_id", "request_id"]
    list_select_related = ["user", "patient"]
    date_hierarchy = "created_at"
    ordering = ["-id"]
    show_full_result_count = False  # COUNT(*) over an ever-growing table on every page

    @staticmethod
    def _person(event, field: str) -> str:
        # The audit trail outlives the user row (ADR 0006): show the kept id when it is gone.
        person_id = getattr(event, f"{field}_id")
        if person_id is None:
            return "-"
        person = event._state.fields_cache.get(field)
        return str(person) if person is not None else f"#{person_id} (deleted)"

    @admin.display(description="user", ordering="user_id")
    def who(self, event) -> str:
        return self._person(event, "user")

    @admin.display(description="patient", ordering="patient_id")
    def whose(self, event) -> str:
        return self._person(event, "patient")

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if not request.user.is_superuser and request.user.organization_id is None:
            # Events without a clinic (a patient reading their own data) are not for staff.
            return queryset.none()
        return queryset

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
