"""Attachment jobs: thin adapters over the services, safe to run twice."""

from __future__ import annotations

from attachments import services
from workers.base import medease_task


@medease_task(name=services.PROCESS_IMAGE_TASK, queue="default")
def process_image(attachment_id: int) -> bool:
    """Strip an image's metadata and make its thumbnail."""
    return services.attachment_process_image(attachment_id=attachment_id)


@medease_task(name="attachments.cleanup", queue="maintenance")
def cleanup() -> int:
    """Remove uploads never completed; re-enqueue images whose processing was lost; forget
    the file names of deleted patients."""
    removed = services.attachments_remove_stale_pending()
    services.attachments_process_pending_images()
    services.attachments_forget_deleted_patients()
    return removed
