"""Reads of attachments, scoped to the requesting user (``Attachment.objects.visible_to``)."""

from __future__ import annotations

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
