"""Staff console for the clinic core, scoped to the staff member's organization.

Consultations are read-only here except through actions (cancel, mark no-show) that call the
services, so the lifecycle rules, notifications and cache invalidation are the API's.
Availability is edited inline on the provider's page; its formsets save through
``services.availability_replace`` (which re-materializes the slots). The "today" board shows
each provider's consultations and walk-in queue side by side.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from accounts import admin as accounts_admin
from accounts.models import Organization, Role, User
from consultations import selectors, services
from consultations.audit import AuditAction, audit_consultations, audit_objects
from consultations.models import (
    Availability,
    AvailabilityException,
    Consultation,
    MedicalRecordEntry,
    QueueEntry,
    QueueStatus,
)
from consultations.selectors.availability import availability_conflicts
from consultations.slotting import DayException, Window
from medease.admin import (
    ClinicTimeAdmin,
    VisibleToAdmin,
    console_zone,
    local_time,
    local_time_field,
    render_in,
)
from medease.exceptions import ApplicationError


def _viewer_tz(request) -> ZoneInfo:
    return console_zone(request.user)


def _audit_changelist(request, response) -> None:
    """A list page is a PHI read of every row it shows (whatever search or filter chose
    them: a patient's name, e-mail, or words of a reason): one event per row, one INSERT."""
    cl = getattr(response, "context_data", None) and response.context_data.get("cl")
    if response.status_code == 200 and cl is not None:
        # The page's own queryset: evaluated here, its cached rows are what the template shows.
        audit_objects(request=request, action=AuditAction.READ, objects=cl.result_list)


def _patient_link(model_admin, obj):
    # Patients have no user page for staff (the user admin is the clinic's members): the
    # front desk's patient page is where the clinic sees one.
    return format_html(
        '<a href="{}">{}</a>',
        reverse("frontdesk:patient", args=[obj.patient_id]),
        obj.patient.full_name,
    )


class AuditedReadAdmin(ClinicTimeAdmin, VisibleToAdmin):
    """A console model of patient data: its list and its object pages are audited reads,
    shown in the clinic's time zone."""

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        _audit_changelist(request, response)
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        obj = self.get_object(request, object_id)
        if obj is not None and response.status_code == 200:
            audit_objects(request=request, action=AuditAction.READ, objects=[obj])
        return response


# --- Availability inlines on the provider's page ------------------------------------------------


# Ticking it (shown with the list of affected visits) confirms cancelling them.
CONFIRM_CONFLICTS_FIELD = "confirm_availability_conflicts"


def _conflicts_error(conflicts, tz: ZoneInfo) -> ValidationError:
    visits = format_html_join(
        "",
        "<li>{} &middot; {}&ndash;{}</li>",
        (
            (
                c.patient.full_name,
                c.scheduled_start.astimezone(tz).strftime("%a %d %b %Y %H:%M"),
                c.scheduled_end.astimezone(tz).strftime("%H:%M"),
            )
            for c in conflicts
        ),
    )
    return ValidationError(
        format_html(
            "This change leaves {} booked consultation(s) outside the provider's hours:"
            '<ul>{}</ul><label><input type="checkbox" name="{}" value="1"> '
            'Cancel them (reason "provider unavailable"; the patients are notified) and save'
            "</label>",
            len(conflicts),
            visits,
            CONFIRM_CONFLICTS_FIELD,
        ),
        code="availability_conflicts",
    )


class _ServiceFormSet(BaseInlineFormSet):
    """An inline formset that saves through a service instead of saving rows itself.

    Blocking booked time is refused with the list of affected visits until the editor ticks
    the confirmation, which cancels them (as the API's ``confirm``)."""

    request = None  # set by the inline's get_formset: the editor (actor, audit, time zone)

    def _kept_forms(self):
        # Unchanged extra forms have empty cleaned_data; deleted rows are left out.
        return [
            form for form in self.forms if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]

    def _specs(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _replace(self, specs) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _confirmed(self) -> bool:
        return self.data.get(CONFIRM_CONFLICTS_FIELD) in ("1", "on", "true")

    def _actor(self):
        return getattr(self.request, "user", None)

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        specs = self._specs()
        try:
            self._validate(specs)
        except ApplicationError as exc:
            messages_ = [exc.message]
            for field_errors in exc.fields.values():
                messages_.extend(field_errors)
            raise ValidationError(messages_) from exc
        if self.instance.pk is None or self._confirmed():
            return
        conflicts = self._conflicts(specs)
        if conflicts:
            if self.request is None:
                raise _conflicts_error(conflicts, ZoneInfo("UTC"))
            # The list names patients: a PHI read.
            audit_consultations(
                request=self.request, action=AuditAction.READ, consultations=conflicts
            )
            raise _conflicts_error(conflicts, _viewer_tz(self.request))

    def save(self, commit=True):
        # Unconfirmed, a visit booked since clean() is kept (the service's "keep").
        self._replace(self._specs(), on_conflict="cancel" if self._confirmed() else "keep")
        # The admin's change message reads these; the service replaced the rows wholesale.
        self.new_objects, self.changed_objects, self.deleted_objects = [], [], []
        return []


class AvailabilityFormSet(_ServiceFormSet):
    def _specs(self):
        return [
            Window(
                int(f.cleaned_data["weekday"]),
                f.cleaned_data["start_time"],
                f.cleaned_data["end_time"],
            )
            for f in self._kept_forms()
        ]

    def _validate(self, specs) -> None:
        services.availability_validate(windows=specs)

    def _conflicts(self, specs):
        return availability_conflicts(provider=self.instance, windows=specs, exceptions=None)

    def _replace(self, specs, *, on_conflict) -> None:
        services.availability_replace(
            provider=self.instance, windows=specs, actor=self._actor(), on_conflict=on_conflict
        )


class AvailabilityExceptionFormSet(_ServiceFormSet):
    def _specs(self):
        return [
            services.ExceptionSpec(
                date=f.cleaned_data["date"],
                kind=f.cleaned_data["kind"],
                start_time=f.cleaned_data.get("start_time"),
                end_time=f.cleaned_data.get("end_time"),
                note=f.cleaned_data.get("note", ""),
            )
            for f in self._kept_forms()
        ]

    def _validate(self, specs) -> None:
        services.availability_validate(exceptions=specs)

    def _conflicts(self, specs):
        days = [DayException(e.date, e.kind, e.start_time, e.end_time) for e in specs]
        return availability_conflicts(provider=self.instance, windows=None, exceptions=days)

    def _replace(self, specs, *, on_conflict) -> None:
        services.availability_replace(
            provider=self.instance, exceptions=specs, actor=self._actor(), on_conflict=on_conflict
        )


class _ServiceInline(admin.TabularInline):
    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        formset.request = request  # a class made for this request by the factory
        return formset


class AvailabilityInline(_ServiceInline):
    model = Availability
    fk_name = "provider"
    formset = AvailabilityFormSet
    fields = ["weekday", "start_time", "end_time"]
    extra = 1
    verbose_name = "weekly availability window"
    verbose_name_plural = "Weekly availability (wall-clock times in the provider's timezone)"


class AvailabilityExceptionInline(_ServiceInline):
    model = AvailabilityException
    fk_name = "provider"
    formset = AvailabilityExceptionFormSet
    fields = ["date", "kind", "start_time", "end_time", "note"]
    extra = 1
    verbose_name_plural = "Days off and extra hours (upcoming)"

    def get_queryset(self, request):
        # Past exceptions are history; the service keeps them whatever this form says.
        yesterday = timezone.now().date() - timezone.timedelta(days=1)
        return super().get_queryset(request).filter(date__gte=yesterday)


accounts_admin.provider_inlines.extend([AvailabilityInline, AvailabilityExceptionInline])


# --- Consultations ------------------------------------------------------------------------------


class ProviderFilter(admin.SimpleListFilter):
    """Providers of the staff member's clinic (all providers for superusers)."""

    title = "provider"
    parameter_name = "provider"

    def lookups(self, request, model_admin):
        providers = User.objects.filter(role=Role.PROVIDER)
        if not request.user.is_superuser:
            providers = providers.filter(organization_id=request.user.organization_id)
        return [(str(p.pk), p.full_name) for p in providers.order_by("full_name")]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(provider_id=self.value())
        return queryset


@admin.register(Consultation)
class ConsultationAdmin(AuditedReadAdmin):
    list_display = [
        "id",
        "when",
        "patient_name",
        "provider_name",
        "status",
        "kind",
    ]
    list_filter = ["status", ProviderFilter, ("scheduled_start", admin.DateFieldListFilter), "kind"]
    search_fields = [
        "patient__full_name",
        "patient__email",
        "provider__full_name",
        "provider__email",
    ]
    list_select_related = ["patient", "provider", "organization"]
    ordering = ["-scheduled_start", "-id"]
    date_hierarchy = "scheduled_start"
    actions = ["cancel_selected", "mark_no_show_selected"]
    change_list_template = "admin/consultations/consultation/change_list.html"
    fields = [
        "status",
        "kind",
        "patient_link",
        "provider",
        "organization",
        "slot_time",
        "scheduled_start_local",
        "scheduled_end_local",
        "reason",
        "provider_notes",
        "created_at_local",
        "checked_in_at_local",
        "started_at_local",
        "completed_at_local",
        "cancelled_at_local",
        "cancelled_by",
        "cancellation_reason",
        "no_show_at_local",
        "rescheduled_from",
    ]
    readonly_fields = fields
    # Each time with its zone's abbreviation (Django's own rendering shows no zone).
    scheduled_start_local = local_time_field("scheduled_start", "scheduled start")
    scheduled_end_local = local_time_field("scheduled_end", "scheduled end")
    created_at_local = local_time_field("created_at", "booked at")
    checked_in_at_local = local_time_field("checked_in_at", "arrived at")
    started_at_local = local_time_field("started_at", "started at")
    completed_at_local = local_time_field("completed_at", "completed at")
    cancelled_at_local = local_time_field("cancelled_at", "cancelled at")
    no_show_at_local = local_time_field("no_show_at", "no-show at")

    @admin.display(description="starts", ordering="scheduled_start")
    def when(self, obj):
        return local_time(obj.scheduled_start)

    @admin.display(description="patient", ordering="patient__full_name")
    def patient_name(self, obj):
        return obj.patient.full_name

    @admin.display(description="provider", ordering="provider__full_name")
    def provider_name(self, obj):
        return obj.provider.full_name

    @admin.display(description="slot")
    def slot_time(self, obj):
        # The slot's own str() is in UTC; the page reads in the clinic's zone.
        if obj.slot_id is None:
            return "-"
        return f"#{obj.slot_id} at {local_time(obj.slot.start)}"

    patient_link = admin.display(description="patient")(_patient_link)

    def has_add_permission(self, request):
        return False  # bookings are made through the API (or its services)

    def has_delete_permission(self, request, obj=None):
        return False  # consultations are cancelled, never deleted

    def has_change_permission(self, request, obj=None):
        # The list's actions (cancel, no-show) need "change"; the page itself is read-only
        # ("View consultation", no Save buttons): status changes only through the services.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    def get_model_perms(self, request):
        # The console's home offers "View", as for the other read-only models.
        return {**super().get_model_perms(request), "change": False}

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "today_url": reverse("admin:consultations_today")}
        return super().changelist_view(request, extra_context)

    def _run(self, request, queryset, action, done: str) -> None:
        changed, refused = [], []
        for consultation in queryset.select_related("patient", "provider"):
            try:
                changed.append(action(consultation=consultation, actor=request.user))
            except ApplicationError as exc:
                refused.append(f"#{consultation.pk}: {exc.message}")
        if changed:
            self.message_user(request, f"{len(changed)} consultation(s) {done}.", messages.SUCCESS)
            audit_consultations(request=request, action=AuditAction.UPDATE, consultations=changed)
        if refused:
            self.message_user(request, "Not changed: " + "; ".join(refused), messages.WARNING)

    @admin.action(description="Cancel selected consultations…", permissions=["change"])
    def cancel_selected(self, request, queryset):
        # Never in one click: the front desk's page lists the visits and who will be told, and
        # asks for the reason the patients get.
        ids = list(queryset.order_by("scheduled_start", "id").values_list("pk", flat=True)[:101])
        query = urlencode({"ids": ",".join(map(str, ids)), "next": request.get_full_path()})
        return HttpResponseRedirect(f"{reverse('frontdesk:cancel')}?{query}")

    @admin.action(description="Mark selected consultations as no-show", permissions=["change"])
    def mark_no_show_selected(self, request, queryset):
        self._run(request, queryset, services.consultation_mark_no_show, "marked as no-show")

    def get_urls(self):
        board = path(
            "today/",
            self.admin_site.admin_view(self.today_board),
            name="consultations_today",
        )
        return [board, *super().get_urls()]

    def _board_organization(self, request) -> Organization | None:
        if not request.user.is_superuser:
            return request.user.organization
        chosen = request.GET.get("organization")
        organizations = Organization.objects.order_by("name")
        if chosen and chosen.isdigit():
            return organizations.filter(pk=int(chosen)).first()
        return organizations.first()

    def today_board(self, request):
        """Each provider's consultations today and their walk-in queue, side by side."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        organization = self._board_organization(request)
        rows, day_consultations = [], []
        tz = ZoneInfo(organization.timezone if organization else "UTC")
        if organization is not None:
            start, end = selectors.provider_today_bounds(tz=tz)
            providers = list(
                User.objects.filter(role=Role.PROVIDER, organization=organization, is_active=True)
                .select_related("provider_profile")
                .order_by("full_name")
            )
            day_consultations = list(
                Consultation.objects.visible_to(request.user)
                .filter(
                    organization=organization, scheduled_start__gte=start, scheduled_start__lt=end
                )
                .select_related("patient")
                .order_by("scheduled_start", "id")
            )
            waiting = list(
                selectors.queue_entries_with_position()
                .visible_to(request.user)
                .filter(organization=organization, status=QueueStatus.WAITING)
                .select_related("patient")
                .order_by("joined_at", "id")
            )
            for provider in providers:
                rows.append(
                    {
                        "provider": provider,
                        "consultations": [
                            c for c in day_consultations if c.provider_id == provider.pk
                        ],
                        "queue": [e for e in waiting if e.provider_id == provider.pk],
                    }
                )
            # Both columns name patients: every row shown, in one INSERT.
            audit_objects(
                request=request, action=AuditAction.READ, objects=[*day_consultations, *waiting]
            )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Today at {organization.name}" if organization else "Today",
            "opts": self.model._meta,
            "organization": organization,
            "organizations": Organization.objects.order_by("name")
            if request.user.is_superuser
            else [],
            "rows": rows,
            "day": timezone.now().astimezone(tz).date(),
            "timezone_name": str(tz),
        }
        response = TemplateResponse(request, "admin/consultations/today_board.html", context)
        return render_in(tz, response)


@admin.register(QueueEntry)
class QueueEntryAdmin(AuditedReadAdmin):
    """Read-only view of walk-in queues (patients join and leave through the API)."""

    # Compact for a 1366 px laptop: one time column (with its zone), names not e-mails.
    list_display = ["id", "joined", "patient_name", "provider_name", "status"]
    list_filter = ["status", ProviderFilter]
    list_select_related = ["provider", "patient"]
    search_fields = [
        "patient__full_name",
        "patient__email",
        "provider__full_name",
        "provider__email",
    ]
    ordering = ["-joined_at", "-id"]
    fields = [
        "status",
        "patient_link",
        "provider",
        "organization",
        "reason",
        "joined_at_local",
        "called_at_local",
        "left_at_local",
        "expired_at_local",
        "removal_reason",
        "removed_by",
        "consultation",
    ]
    readonly_fields = fields
    joined_at_local = local_time_field("joined_at", "joined at")
    called_at_local = local_time_field("called_at", "called at")
    left_at_local = local_time_field("left_at", "left at")
    expired_at_local = local_time_field("expired_at", "expired at")

    patient_link = admin.display(description="patient")(_patient_link)

    @admin.display(description="joined", ordering="joined_at")
    def joined(self, obj):
        return local_time(obj.joined_at)

    @admin.display(description="patient", ordering="patient__full_name")
    def patient_name(self, obj):
        return obj.patient.full_name

    @admin.display(description="provider", ordering="provider__full_name")
    def provider_name(self, obj):
        return obj.provider.full_name

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(MedicalRecordEntry)
class MedicalRecordEntryAdmin(AuditedReadAdmin):
    """Read-only view of record entries: the clinic's staff read the entries written in their
    clinic for patients it treats (``MedicalRecordEntry.objects.visible_to``)."""

    list_display = ["id", "created_at", "patient", "kind", "author"]
    list_filter = ["kind"]
    list_select_related = ["patient", "author"]
    search_fields = ["patient__full_name", "patient__email"]
    ordering = ["-id"]
    fields = [
        "patient_link",
        "kind",
        "text",
        "author",
        "consultation",
        "supersedes",
        "created_at_local",
    ]
    readonly_fields = fields
    created_at_local = local_time_field("created_at", "written at")
    patient_link = admin.display(description="patient")(_patient_link)

    def has_add_permission(self, request):
        return False  # entries are written through the API (medical_record_add)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # append-only
