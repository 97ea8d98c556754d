"""Writes of attachments: request an upload, complete it, remove what was never completed."""

from __future__ import annotations

import codecs
import logging
import re
import secrets
from datetime import timedelta
from functools import partial
from pathlib import Path

import filetype
from celery import signature
from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone
from django.utils.module_loading import import_string

from accounts.models import Organization, Role, User
from attachments.models import MAX_ATTACHMENTS_PER_ITEM, Attachment, AttachmentStatus
from attachments.storage import get_store, store_errors
from consultations import lifecycle
from consultations import selectors as consultation_selectors
from consultations.models import Consultation
from medease.exceptions import ApplicationError, Conflict, Forbidden, InvalidInput, NotFound

logger = logging.getLogger("medease.attachments")

PROCESS_IMAGE_TASK = "attachments.process_image"
UPLOAD_PREFIX, FINAL_PREFIX = "uploads/", "attachments/"
# filetype needs the first 261 bytes; a little more costs nothing.
SNIFF_BYTES = 8192


class TooLarge(ApplicationError):
    status_code = 413
    code = "too_large"


class UnsupportedType(ApplicationError):
    status_code = 415
    code = "unsupported_type"


def _new_key(organization_id: int) -> str:
    # Grouped by clinic and month (lifecycle rules, backups, per-clinic export); the name
    # itself is random so the object key reveals nothing about the file. Clients write only
    # under uploads/; completion moves the object under attachments/ (``_final_key``).
    today = timezone.now()
    return f"{UPLOAD_PREFIX}{organization_id}/{today:%Y/%m}/{secrets.token_urlsafe(24)}"


def _final_key(upload_key: str) -> str:
    return FINAL_PREFIX + upload_key.removeprefix(UPLOAD_PREFIX)


def _check_limits(*, content_type: str, size: int) -> None:
    if content_type not in settings.ATTACHMENT_TYPES:
        raise UnsupportedType(
            f"Files of type {content_type!r} are not accepted; allowed: "
            f"{', '.join(settings.ATTACHMENT_TYPES)}."
        )
    if size > settings.ATTACHMENT_MAX_BYTES:
        raise TooLarge(f"Files may be at most {settings.ATTACHMENT_MAX_BYTES} bytes.")


def attachment_create(
    *, uploader: User, consultation: Consultation, filename: str, content_type: str, size: int
) -> Attachment:
    """Record a pending upload to a consultation and return it (the caller asks the store for
    the signed upload target)."""
    if uploader.pk not in (consultation.patient_id, consultation.provider_id):
        raise Forbidden("Only the patient and the provider may attach files.")
    if not lifecycle.is_active(consultation.status):
        raise Conflict(
            "Files can be attached only while the consultation is open.",
            code="consultation_closed",
        )
    return _create_pending(
        uploader=uploader,
        consultation=consultation,
        patient_id=consultation.patient_id,
        organization_id=consultation.organization_id,
        filename=filename,
        content_type=content_type,
        size=size,
    )


def attachment_create_for_record(
    *, uploader: User, patient: User, filename: str, content_type: str, size: int
) -> Attachment:
    """Record a pending upload to a patient's record, outside any consultation (a letter, a
    scan the clinic received), by a treating provider or the clinic's staff."""
    if uploader.role not in (Role.PROVIDER, Role.STAFF) or not uploader.organization_id:
        raise Forbidden("Only providers and clinic staff add files to a record.")
    # NotFound unless the uploader's clinic treats the patient.
    consultation_selectors.patient_get_for_records(user=uploader, patient_id=patient.pk)
    return _create_pending(
        uploader=uploader,
        consultation=None,
        patient_id=patient.pk,
        organization_id=uploader.organization_id,
        filename=filename,
        content_type=content_type,
        size=size,
    )


def _create_pending(
    *,
    uploader: User,
    consultation: Consultation | None,
    patient_id: int,
    organization_id: int,
    filename: str,
    content_type: str,
    size: int,
) -> Attachment:
    _check_limits(content_type=content_type, size=size)
    quota = settings.ATTACHMENT_ORG_QUOTA_BYTES
    with transaction.atomic():
        # Serializes uploads of one clinic so two concurrent requests cannot both fit the
        # last bytes of the quota.
        Organization.objects.select_for_update().filter(pk=organization_id).first()
        used = (
            Attachment.objects.filter(
                organization_id=organization_id,
                status__in=(AttachmentStatus.PENDING, AttachmentStatus.READY),
                deleted_at__isnull=True,
            ).aggregate(total=Sum("size"))["total"]
            or 0
        )
        if used + size > quota:
            raise TooLarge(
                f"Your clinic's storage is full: {used} of {quota} bytes are used and this "
                f"file needs {size}. Ask the clinic to remove old files or raise its quota.",
                code="quota_exceeded",
            )
        return Attachment.objects.create(
            uploader=uploader,
            consultation=consultation,
            patient_id=patient_id,
            organization_id=organization_id,
            filename=filename,
            content_type=content_type,
            size=size,
            storage_key=_new_key(organization_id),
        )


def _is_utf8_text(chunks) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in chunks:
            if b"\x00" in chunk:
                return False
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _content_matches(*, key: str, content_type: str, store) -> bool:
    if content_type == "text/plain":
        return _is_utf8_text(store.iter_chunks(key))
    kind = filetype.guess(store.read_head(key, SNIFF_BYTES))
    return kind is not None and kind.mime == content_type


def _reject(*, attachment: Attachment, store, code: str, message: str) -> None:
    """Mark the upload rejected, delete its object, raise the 400 the client sees."""
    Attachment.objects.filter(pk=attachment.pk, status=AttachmentStatus.PENDING).update(
        status=AttachmentStatus.REJECTED, completed_at=timezone.now()
    )
    with store_errors():
        store.delete(_final_key(attachment.storage_key))
        store.delete(attachment.storage_key)
    raise InvalidInput(message, code=code)


def attachment_complete(*, attachment: Attachment, user: User) -> Attachment:
    """Check the stored object (size, sniffed type, scanner) and mark the attachment ready;
    a mismatch deletes the object and answers 400 ``upload_mismatch``."""
    if attachment.uploader_id != user.pk:
        raise NotFound("Attachment not found.")
    if attachment.status == AttachmentStatus.READY:
        return attachment  # completing twice is harmless
    if attachment.status != AttachmentStatus.PENDING:
        raise Conflict("This upload was rejected; start a new one.", code="upload_rejected")
    store = get_store()
    key = _final_key(attachment.storage_key)
    # The store's answers (no transaction is held while it is asked). The object is moved
    # out of the client's reach first: its upload URL stays valid for minutes, and what is
    # checked must be what is kept.
    with store_errors():
        if store.size(attachment.storage_key) is not None:
            store.move(attachment.storage_key, key)
        stored_size = store.size(key)
        matches = stored_size == attachment.size and _content_matches(
            key=key, content_type=attachment.content_type, store=store
        )
    if stored_size is None:
        raise InvalidInput("Nothing was uploaded for this attachment.", code="upload_mismatch")
    if not matches:
        _reject(
            attachment=attachment,
            store=store,
            code="upload_mismatch",
            message=(
                f"The uploaded file is not the declared {attachment.content_type} of "
                f"{attachment.size} bytes."
            ),
        )
    scanner = import_string(settings.ATTACHMENT_SCANNER)
    with store_errors():
        reason = scanner(attachment=attachment, chunks=store.iter_chunks(key))
    if reason:
        logger.warning("attachment %s refused by the scanner: %s", attachment.pk, reason)
        _reject(
            attachment=attachment,
            store=store,
            code="upload_rejected",
            message="The file was refused by the malware scanner.",
        )
    with transaction.atomic():
        changed = Attachment.objects.filter(
            pk=attachment.pk, status=AttachmentStatus.PENDING
        ).update(status=AttachmentStatus.READY, completed_at=timezone.now(), storage_key=key)
        if changed and attachment.is_image:
            transaction.on_commit(partial(_enqueue_processing, attachment.pk), robust=True)
    current = Attachment.objects.filter(pk=attachment.pk).first()
    if current is None:  # removed by the cleanup job meanwhile
        raise NotFound("Attachment not found.")
    if current.status != AttachmentStatus.READY:
        raise Conflict("This upload was rejected; start a new one.", code="upload_rejected")
    return current


def _enqueue_processing(attachment_id: int) -> None:
    # By registered name: attachments.tasks imports these services, never the reverse.
    try:
        signature(PROCESS_IMAGE_TASK, args=[attachment_id]).apply_async()
    except Exception:  # a broker outage must not fail the request; the beat job retries
        logger.warning("could not enqueue attachment %s", attachment_id, exc_info=True)


def attachment_process_image(*, attachment_id: int) -> bool:
    """Re-encode a ready image without its metadata (location, camera) over the original and
    store a thumbnail. Safe to run twice: a processed image is left alone."""
    from attachments import imaging

    attachment = Attachment.objects.filter(
        pk=attachment_id, status=AttachmentStatus.READY, processed_at__isnull=True
    ).first()
    if attachment is None or not attachment.is_image:
        return False
    store = get_store()
    with store.open(attachment.storage_key) as source:
        result = imaging.clean_and_thumbnail(source, content_type=attachment.content_type)
    if result is None:
        # Sniffed as an image, but Pillow cannot read it: nobody gets to download it.
        with transaction.atomic():
            Attachment.objects.filter(pk=attachment.pk).update(status=AttachmentStatus.REJECTED)
        store.delete(attachment.storage_key)
        return False
    clean, thumbnail = result
    thumbnail_key = f"{attachment.storage_key}.thumb.jpg"
    store.save(attachment.storage_key, clean, content_type=attachment.content_type)
    store.save(thumbnail_key, thumbnail, content_type="image/jpeg")
    with transaction.atomic():
        Attachment.objects.filter(pk=attachment.pk, processed_at__isnull=True).update(
            size=clean.getbuffer().nbytes,
            thumbnail_key=thumbnail_key,
            processed_at=timezone.now(),
        )
    return True


def attachments_remove_stale_pending(*, batch: int = 500) -> int:
    """Delete uploads still pending after ``ATTACHMENT_PENDING_TTL_SECONDS`` (their objects
    and rows). Returns how many went."""
    cutoff = timezone.now() - timedelta(seconds=settings.ATTACHMENT_PENDING_TTL_SECONDS)
    store = get_store()
    removed = 0
    stale = Attachment.objects.filter(status=AttachmentStatus.PENDING, created_at__lt=cutoff)
    for attachment in stale.order_by("id")[:batch]:
        # The row first, conditionally: an upload completed meanwhile keeps its object.
        deleted = Attachment.objects.filter(
            pk=attachment.pk, status=AttachmentStatus.PENDING
        ).delete()[0]
        if deleted:
            store.delete(attachment.storage_key)
            store.delete(_final_key(attachment.storage_key))  # a completion that died midway
            removed += 1
    return removed


def attachments_process_pending_images(*, batch: int = 100) -> int:
    """Re-enqueue ready images never processed (broker down at completion, a lost task)."""
    cutoff = timezone.now() - timedelta(minutes=5)
    ids = list(
        Attachment.objects.filter(
            status=AttachmentStatus.READY,
            processed_at__isnull=True,
            content_type__startswith="image/",
            completed_at__lt=cutoff,
        ).values_list("pk", flat=True)[:batch]
    )
    for attachment_id in ids:
        _enqueue_processing(attachment_id)
    return len(ids)


ANONYMOUS_NAME = r"^attachment-[0-9]+(\.[A-Za-z0-9]+)?$"


def attachments_forget_deleted_patients(*, batch: int = 500) -> int:
    """After a patient's deletion (``accounts.services.patient_delete``): their uploads
    still pending are removed, and the file names of the rest (which may name the person)
    become ``attachment-<id>.<ext>``. The files themselves stay with the medical record,
    like its entries (docs/adr/0006), visible to the treating clinic only."""
    deleted = Attachment.objects.filter(patient__patient_profile__deleted_at__isnull=False)
    store = get_store()
    for attachment in deleted.filter(status=AttachmentStatus.PENDING).order_by("id")[:batch]:
        if Attachment.objects.filter(pk=attachment.pk, status=AttachmentStatus.PENDING).delete()[0]:
            store.delete(attachment.storage_key)
            store.delete(_final_key(attachment.storage_key))
    renamed = 0
    named = deleted.exclude(filename__regex=ANONYMOUS_NAME).order_by("id")[:batch]
    for attachment in named.only("pk", "filename"):
        suffix = Path(attachment.filename).suffix.lower()
        if not re.fullmatch(r"\.[a-z0-9]{1,10}", suffix):
            suffix = ""
        renamed += Attachment.objects.filter(pk=attachment.pk).update(
            filename=f"attachment-{attachment.pk}{suffix}"
        )
    return renamed


# --- Linking to a message or a record entry -----------------------------------------------


def _clean_ids(attachment_ids) -> list[int]:
    """The requested ids, each once, in order (the API bounded their type and count)."""
    seen: dict[int, None] = {}
    for attachment_id in attachment_ids or ():
        seen.setdefault(int(attachment_id), None)
    if len(seen) > MAX_ATTACHMENTS_PER_ITEM:
        raise InvalidInput(
            f"At most {MAX_ATTACHMENTS_PER_ITEM} files per message or entry.",
            fields={"attachments": [f"At most {MAX_ATTACHMENTS_PER_ITEM} items."]},
        )
    return list(seen)


def _claim(*, uploader: User, ids: list[int], scope: Q, where: str, **link) -> list[Attachment]:
    """Lock the uploader's attachments ``ids`` and link them (``link``), or raise a 400
    naming each one that cannot be linked. Runs in the caller's transaction.

    Someone else's attachment, a deleted one, or one outside ``scope`` reads as unknown:
    the answer never tells whether another user's id exists.
    """
    rows = {
        attachment.pk: attachment
        for attachment in Attachment.objects.select_for_update()
        .filter(pk__in=ids, uploader_id=uploader.pk, deleted_at__isnull=True)
        .filter(scope)
        .order_by("pk")  # one lock order for concurrent sends
    }
    problems = []
    for attachment_id in ids:
        attachment = rows.get(attachment_id)
        if attachment is None:
            problems.append(f"Attachment {attachment_id}: no such file of yours {where}.")
        elif attachment.status != AttachmentStatus.READY:
            problems.append(f"Attachment {attachment_id} is not ready: complete its upload first.")
        elif attachment.message_id is not None or attachment.record_entry_id is not None:
            problems.append(
                f"Attachment {attachment_id} is already attached to another message or entry."
            )
    if problems:
        raise InvalidInput("Some attachments cannot be attached.", fields={"attachments": problems})
    Attachment.objects.filter(pk__in=ids).update(**link)
    # In upload order, as every answer lists them (attachments_of_messages and the like).
    linked = [rows[attachment_id] for attachment_id in sorted(ids)]
    for attachment in linked:
        for field, value in link.items():
            setattr(attachment, field, value)
    return linked


def attachments_link_to_message(
    *, uploader: User, consultation_id: int, message_id: int, message_created_at, attachment_ids
) -> list[Attachment]:
    """Attach the sender's own ready, unlinked files of this consultation to a message (in
    the send's transaction); returns them in upload (id) order."""
    ids = _clean_ids(attachment_ids)
    if not ids:
        return []
    return _claim(
        uploader=uploader,
        ids=ids,
        scope=Q(consultation_id=consultation_id),
        where="in this consultation",
        message_id=message_id,
        message_created_at=message_created_at,
    )


def attachments_link_to_record(*, author: User, entry, attachment_ids) -> list[Attachment]:
    """Attach the author's own ready, unlinked files of the entry's patient, held by the
    entry's clinic, to a record entry (in the entry's transaction). Registered with
    ``consultations.services.records`` by the app's ``ready``."""
    ids = _clean_ids(attachment_ids)
    if not ids:
        return []
    return _claim(
        uploader=author,
        ids=ids,
        scope=Q(patient_id=entry.patient_id, organization_id=entry.organization_id),
        where="for this patient",
        record_entry=entry,
    )
