"""Staff console: attachments are read-only metadata, scoped by ``Attachment.objects.visible_to``
(no download links here: those are signed, audited and handed out by the API)."""

from __future__ import annotations

from django.contrib import admin

from attachments.models import Attachment
from medease.admin import ReadOnlyAdmin, VisibleToAdmin


@admin.register(Attachment)
class AttachmentAdmin(VisibleToAdmin, ReadOnlyAdmin):
    list_display = [
        "id",
        "filename",
        "content_type",
        "size",
        "status",
        "organization",
        "created_at",
    ]
    list_filter = ["status", "content_type"]
    search_fields = ["filename"]
    list_select_related = ["organization"]
    readonly_fields = [field.name for field in Attachment._meta.fields]
