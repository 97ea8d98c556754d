"""Reads of attachments, scoped to the requesting user (``Attachment.objects.visible_to``)."""

from __future__ import annotations

from accounts.models import User
from attachments.models import Attachment
from medease.exceptions import NotFound


def attachment_get_for_user(*, user: User, attachment_id: int) -> Attachment:
    """One attachment the user may see, or NotFound (also when it exists but is not theirs)."""
    attachment = Attachment.objects.visible_to(user).filter(pk=attachment_id).first()
    if attachment is None:
        raise NotFound("Attachment not found.")
    return attachment
