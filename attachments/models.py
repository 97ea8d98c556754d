"""Attachments: metadata of files kept in object storage (the bytes never enter the database)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.utils.timezone import now

from accounts.models import Role
from consultations.models import Consultation, MedicalRecordEntry

# How many files one message or record entry may carry.
MAX_ATTACHMENTS_PER_ITEM = 10


class AttachmentStatus(models.TextChoices):
    PENDING = "pending", "Pending upload"
    READY = "ready", "Ready"
    REJECTED = "rejected", "Rejected"


class AttachmentQuerySet(models.QuerySet):
    def visible_to(self, user) -> AttachmentQuerySet:
        """Attachments ``user`` may see. In a consultation: whoever may see the consultation
        (``Consultation.objects.visible_to``). On a record (no consultation): the patient, and
        the clinicians of the clinic that treats them (``Consultation.objects.treating``),
        like ``MedicalRecordEntry``. Deleted ones: nobody."""
        alive = self.filter(deleted_at__isnull=True)
        if getattr(user, "is_superuser", False):
            return alive
        if not getattr(user, "is_authenticated", False):
            return alive.none()
        in_consultation = Q(consultation__in=Consultation.objects.visible_to(user).values("pk"))
        if user.role == Role.PATIENT:
            on_record = Q(patient_id=user.pk)
        elif user.role in (Role.PROVIDER, Role.STAFF) and user.organization_id:
            treats = Consultation.objects.treating(user).filter(patient_id=OuterRef("patient_id"))
            on_record = Q(Exists(treats), organization_id=user.organization_id)
        else:
            on_record = Q(pk__in=[])
        return alive.filter(in_consultation | (Q(consultation__isnull=True) & on_record))


class Attachment(models.Model):
    """A document or image uploaded to a consultation or a patient's record."""

    uploader = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="attachments_uploaded"
    )
    consultation = models.ForeignKey(
        Consultation,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="attachments",
    )
    # Whose health data this is (the consultation's patient, or the record's).
    patient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="attachments"
    )
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="attachments"
    )
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    # Declared at creation; replaced by the stored size when images are re-encoded.
    size = models.BigIntegerField()
    status = models.CharField(
        max_length=8, choices=AttachmentStatus.choices, default=AttachmentStatus.PENDING
    )
    # Random object key; never derived from the filename (attachments/storage.py).
    storage_key = models.CharField(max_length=200, unique=True)
    thumbnail_key = models.CharField(max_length=200, blank=True)
    # Images: set once the worker stored the metadata-stripped copy and the thumbnail.
    processed_at = models.DateTimeField(null=True, blank=True)
    # What the attachment was sent with; each attachment is linked once, to one message or
    # one record entry (null: not linked yet).
    # Plain columns, no foreign key: ``messaging.Message`` is range-partitioned by month on
    # PostgreSQL with the primary key (id, created_at), so a key would need both columns and
    # a composite foreign key Django cannot model; and attachments sits below messaging, so
    # it may not name its model. created_at lets a lookup of the message prune partitions.
    message_id = models.BigIntegerField(null=True, blank=True)
    message_created_at = models.DateTimeField(null=True, blank=True)
    record_entry = models.ForeignKey(
        MedicalRecordEntry,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="attachments",
    )
    created_at = models.DateTimeField(default=now, editable=False)
    completed_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = AttachmentQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(size__gte=0), name="attachments_size_not_negative"),
            models.CheckConstraint(
                condition=Q(message_id__isnull=True) | Q(record_entry__isnull=True),
                name="attachments_linked_once",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "status"], name="attach_org_status_idx"),
            models.Index(fields=["status", "created_at"], name="attach_status_created_idx"),
            models.Index(fields=["consultation", "-id"], name="attach_consultation_idx"),
            # History pages fetch their messages' attachments by message id.
            models.Index(
                fields=["message_id"],
                condition=Q(message_id__isnull=False),
                name="attach_message_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Attachment {self.pk} ({self.status})"

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")
