"""The outbox in the staff console: read-only rows, failures visible, resend through a service."""

from __future__ import annotations

from django.contrib import admin, messages

from medease.admin import ClinicTimeAdmin, local_time
from workers import services
from workers.models import Notification, NotificationPreference, NotificationStatus


@admin.register(Notification)
class NotificationAdmin(ClinicTimeAdmin):
    # Compact for a 1366 px laptop: the channel is a filter; sent and next-try times are on
    # the notification's page.
    list_display = ["id", "created", "user", "kind", "status", "attempts", "short_error"]
    list_filter = ["status", "kind", "channel"]
    list_select_related = ["user"]
    search_fields = ["user__email", "dedupe_key"]
    date_hierarchy = "created_at"
    actions = ["resend"]
    readonly_fields = [field.name for field in Notification._meta.fields]

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: Notification) -> str:
        return local_time(obj.created_at)

    @admin.display(description="last error")
    def short_error(self, obj: Notification) -> str:
        return (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else obj.last_error

    @admin.action(description="Resend the selected failed notifications", permissions=["resend"])
    def resend(self, request, queryset):
        ids = list(queryset.filter(status=NotificationStatus.FAILED).values_list("pk", flat=True))
        count = services.notifications_resend(notification_ids=ids)
        skipped = queryset.count() - count
        self.message_user(request, f"{count} notification(s) queued again.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"{skipped} selected notification(s) were not failed and were left alone.",
                messages.WARNING,
            )

    # The outbox is written by services only; the console watches and resends.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_resend_permission(self, request) -> bool:
        return request.user.is_superuser or request.user.has_perm("workers.change_notification")

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(NotificationPreference)
class NotificationPreferenceAdmin(admin.ModelAdmin):
    list_display = ["user", "muted_kinds", "quiet_hours_start", "quiet_hours_end", "updated_at"]
    list_select_related = ["user"]
    search_fields = ["user__email"]
    raw_id_fields = ["user"]
    readonly_fields = ["updated_at"]
