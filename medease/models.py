"""The one model of the infrastructure app: the append-only audit log of PHI access."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.timezone import now


class AuditAction(models.TextChoices):
    READ = "read", "Read"
    CREATE = "create", "Create"
    UPDATE = "update", "Update"


class AuditEvent(models.Model):
    """Who (user, ip) did what (read/create/update) to which PHI object, when. Append-only."""

    created_at = models.DateTimeField(default=now, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    ip = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    # Whose data it is, and which clinic's staff may review the event.
    patient = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    organization = models.ForeignKey(
        "accounts.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    request_id = models.CharField(max_length=128, blank=True)

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
