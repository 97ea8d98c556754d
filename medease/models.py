"""The one model of the infrastructure app: the append-only audit log of PHI access."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.timezone import now


class AuditAction(models.TextChoices):
    READ = "read", "Read"
    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    DELETE = "delete", "Delete"


def _kept_id(to: str, **kwargs) -> models.ForeignKey:
    """A reference the audit trail keeps after its row is gone (docs/adr/0006-*.md).

    No database constraint and no cascade: deleting a user or clinic leaves the id as it
    was, and the append-only trigger is never asked to change a row. The relation is kept
    for the console's joins (a deleted row then shows as empty).
    """
    return models.ForeignKey(
        to,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        **kwargs,
    )


class AuditEvent(models.Model):
    """Who (user, ip) did what to which PHI object, when. Append-only; outlives its users."""

    created_at = models.DateTimeField(default=now, db_index=True)
    user = _kept_id(settings.AUTH_USER_MODEL)
    ip = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    # Whose data it is, and which clinic's staff may review the event.
    patient = _kept_id(settings.AUTH_USER_MODEL)
    organization = _kept_id("accounts.Organization")
    request_id = models.CharField(max_length=128, blank=True)
    # Made by the request, so an event the flusher writes twice (redelivered after a crash,
    # or also written by the synchronous fallback) is stored once. Empty on older rows:
    # giving them one would be an UPDATE, which the append-only trigger refuses.
    event_id = models.UUIDField(null=True, unique=True, default=uuid.uuid4, editable=False)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="audit_org_time_idx"),
            models.Index(fields=["patient", "-created_at"], name="audit_patient_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.action} {self.object_type}:{self.object_id}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise RuntimeError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise RuntimeError("Audit events are append-only.")
