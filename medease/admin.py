"""Admin helpers (scoping by organization or by the model's visibility policy, read-only pages
in the clinic's time zone) and the audit log's console page."""

from __future__ import annotations

import zoneinfo
from datetime import datetime

from django.contrib import admin
from django.utils import timezone

from medease.models import AuditEvent


def console_zone(user) -> zoneinfo.ZoneInfo:
    """The zone a console user reads times in: their clinic's (the desk's day), else their own
    (a superuser without a clinic); UTC for a name that is no zone."""
    organization = getattr(user, "organization", None)
    name = organization.timezone if organization is not None else getattr(user, "timezone", "")
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def zone_label(tz: zoneinfo.ZoneInfo, at: datetime | None = None) -> str:
    """``America/New_York (EST)``: the zone's name and its abbreviation at ``at`` (now)."""
    abbreviation = (at or timezone.now()).astimezone(tz).tzname()
    return str(tz) if abbreviation in (None, str(tz)) else f"{tz} ({abbreviation})"


def local_time(value: datetime | None, tz: zoneinfo.ZoneInfo | None = None) -> str:
    """A time as the console lists it, with its zone's abbreviation: ``25 Nov 2026 09:30 EST``."""
    if value is None:
        return "-"
    local = value.astimezone(tz or timezone.get_current_timezone())
    return f"{local:%d %b %Y %H:%M} {local.tzname()}"


def local_time_field(name: str, description: str):
    """A read-only page's line for the datetime field ``name``, with its zone's abbreviation."""

    @admin.display(description=description, ordering=name)
    def show(model_admin, obj) -> str:
        return local_time(getattr(obj, name))

    show.__name__ = f"{name}_local"
    return show


def render_in(tz: zoneinfo.ZoneInfo, response):
    """Render a lazy TemplateResponse while ``tz`` is active (dates in that zone)."""
    with timezone.override(tz):
        if hasattr(response, "render") and not getattr(response, "is_rendered", True):
            response.render()
    return response


class ClinicTimeAdmin(admin.ModelAdmin):
    """List and object pages in the clinic's zone (``console_zone``), the zone named on the
    page, and a plain title where the rows are read-only ("Consultations", not "Select
    consultation to change"): the page is built and rendered with the zone active, so the
    date filters' "today" is the clinic's too."""

    def _zone_context(self, request, extra_context, title: str | None = None) -> dict:
        tz = console_zone(request.user)
        context = {"console_zone": zone_label(tz), **(extra_context or {})}
        if title is not None:
            context.setdefault("title", title)
        return context

    def _list_is_read_only(self, request) -> bool:
        # Actions may need "change" (consultations' cancel); no list edits, no add.
        return not self.list_editable and not self.has_add_permission(request)

    def changelist_view(self, request, extra_context=None):
        tz = console_zone(request.user)
        title = None
        if self._list_is_read_only(request):
            title = str(self.model._meta.verbose_name_plural).capitalize()
        with timezone.override(tz):
            response = super().changelist_view(
                request, self._zone_context(request, extra_context, title)
            )
        return render_in(tz, response)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        tz = console_zone(request.user)
        with timezone.override(tz):
            response = super().change_view(
                request, object_id, form_url, self._zone_context(request, extra_context)
            )
        return render_in(tz, response)

    def history_view(self, request, object_id, extra_context=None):
        tz = console_zone(request.user)
        with timezone.override(tz):
            response = super().history_view(
                request, object_id, self._zone_context(request, extra_context)
            )
        return render_in(tz, response)


class ReadOnlyAdmin(ClinicTimeAdmin):
    """A console model nobody edits here: "View …" pages without Save buttons."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


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
class AuditEventAdmin(OrganizationScopedAdmin, ReadOnlyAdmin):
    """The PHI audit log: read-only, each clinic's staff see their clinic's events."""

    # Compact for a 1366 px laptop: the request id is on the event's page (and searchable).
    list_display = ["when", "who", "action", "object_type", "object_id", "whose", "ip"]
    list_filter = ["action", "object_type", ("created_at", admin.DateFieldListFilter)]
    search_fields = [
        "user__email",
        "user__full_name",
        "patient__email",
        "patient__full_name",
        "object_id",
        "request_id",
    ]
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

    @admin.display(description="when", ordering="created_at")
    def when(self, event) -> str:
        return local_time(event.created_at)

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
