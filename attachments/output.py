"""The attachment shapes other apps embed: with fresh signed URLs (REST answers, each URL
audited by the caller in the answer's one audit write) or metadata only (websocket events,
whose URLs would expire long before a client acts on them)."""

from __future__ import annotations

from collections.abc import Iterable

from attachments.models import Attachment, AttachmentStatus
from attachments.serializers import AttachmentMetadataOutput, AttachmentOutput
from attachments.storage import get_store

AUDIT_TYPE = "attachment"

# (object type, object id, patient id, organization id): consultations.audit.audit_typed_rows.
TypedAuditRow = tuple[str, object, int | None, int | None]


def _downloadable(attachment: Attachment) -> bool:
    # Images are downloadable once the worker removed their metadata.
    return attachment.status == AttachmentStatus.READY and (
        not attachment.is_image or attachment.processed_at is not None
    )


def signed_body(request, attachment: Attachment, audit_rows: list[TypedAuditRow]) -> dict:
    """The attachment with fresh signed URLs; appends one audit row per URL handed out."""
    context: dict = {}
    if _downloadable(attachment):
        store = get_store()
        context["download_url"] = request.build_absolute_uri(
            store.download_url(
                key=attachment.storage_key,
                filename=attachment.filename,
                content_type=attachment.content_type,
            )
        )
        audit_rows.append(
            (AUDIT_TYPE, str(attachment.pk), attachment.patient_id, attachment.organization_id)
        )
        if attachment.thumbnail_key:
            context["thumbnail_url"] = request.build_absolute_uri(
                store.download_url(
                    key=attachment.thumbnail_key,
                    filename=f"thumbnail-{attachment.pk}.jpg",
                    content_type="image/jpeg",
                )
            )
            audit_rows.append(
                (
                    AUDIT_TYPE,
                    f"{attachment.pk}/thumbnail",
                    attachment.patient_id,
                    attachment.organization_id,
                )
            )
    return AttachmentOutput(attachment, context=context).data


def signed_bodies(
    request, attachments: Iterable[Attachment], audit_rows: list[TypedAuditRow]
) -> list[dict]:
    """:func:`signed_body` of each (no query: the URLs are signed locally)."""
    return [signed_body(request, attachment, audit_rows) for attachment in attachments]


def metadata(attachments: Iterable[Attachment]) -> list[dict]:
    """Plain-JSON metadata without URLs (``GET attachments/{id}`` hands those out)."""
    return [dict(AttachmentMetadataOutput(attachment).data) for attachment in attachments]
