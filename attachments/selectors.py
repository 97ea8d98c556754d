"""Reads of attachments, scoped to the requesting user (``Attachment.objects.visible_to``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from accounts.models import User
from attachments.models import Attachment, AttachmentStatus
from medease.exceptions import NotFound


def attachment_get_for_user(*, user: User, attachment_id: int) -> Attachment:
    """One attachment the user may see, or NotFound (also when it exists but is not theirs)."""
    attachment = Attachment.objects.visible_to(user).filter(pk=attachment_id).first()
    if attachment is None:
        raise NotFound("Attachment not found.")
    return attachment


def attachment_pending(storage_key: str) -> bool:
    """Whether an upload still waits for its bytes under this key (the signed upload URL of
    the embedded default checks it; the key in the URL is the authorization)."""
    return Attachment.objects.filter(
        storage_key=storage_key, status=AttachmentStatus.PENDING
    ).exists()


def attachments_of_messages(
    *, consultation_id: int, message_ids: Iterable[int]
) -> dict[int, list[Attachment]]:
    """The attachments of these messages, by message id (one query). The caller authorized
    the consultation (``consultation_get_for_user``)."""
    ids = list(message_ids)
    found: dict[int, list[Attachment]] = defaultdict(list)
    if not ids:
        return found
    rows = Attachment.objects.filter(
        consultation_id=consultation_id, message_id__in=ids, deleted_at__isnull=True
    ).order_by("id")
    for attachment in rows:
        found[attachment.message_id].append(attachment)
    return found


def attachments_of_record_entries(
    *, user: User, entry_ids: Iterable[int]
) -> dict[int, list[Attachment]]:
    """The attachments of these record entries the user may see, by entry id (one query)."""
    ids = list(entry_ids)
    found: dict[int, list[Attachment]] = defaultdict(list)
    if not ids:
        return found
    rows = Attachment.objects.visible_to(user).filter(record_entry_id__in=ids).order_by("id")
    for attachment in rows:
        found[attachment.record_entry_id].append(attachment)
    return found
