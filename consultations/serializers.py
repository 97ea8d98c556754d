"""Input and output shapes of the clinic-core API (docs/api.md, "Resources and endpoints").

Datetimes are rendered in the caller's timezone (the views activate it), with their offset.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC

from django.db import models
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import User
from consultations.models import (
    Consultation,
    ConsultationKind,
    ConsultationStatus,
    ExceptionKind,
    MedicalRecordEntry,
    QueueEntry,
    RecordKind,
    Slot,
    Weekday,
)

# --- Output --------------------------------------------------------------------------------


def _named_choices(name: str, choices: type[models.TextChoices]) -> type[serializers.ChoiceField]:
    """A ChoiceField whose OpenAPI enum is the component ``name``.

    Several models here and in other apps have a field called "kind"; unnamed, their enums
    collide in the schema (drf-spectacular warns, and ``check --deploy`` fails on it).
    """

    @extend_schema_field({"type": "string", "enum": list(choices.values)}, component_name=name)
    class NamedChoiceField(serializers.ChoiceField):
        def __init__(self, **kwargs):
            super().__init__(choices=choices.choices, **kwargs)

    NamedChoiceField.__name__ = f"{name}Field"
    return NamedChoiceField


RecordKindField = _named_choices("RecordKind", RecordKind)
ConsultationKindField = _named_choices("ConsultationKind", ConsultationKind)
ExceptionKindField = _named_choices("AvailabilityExceptionKind", ExceptionKind)


class ProviderOutput(serializers.ModelSerializer):
    """``{id, full_name, specialty, organization, ...}``; the id is the provider's user id."""

    specialty = serializers.CharField(source="provider_profile.specialty")
    bio = serializers.CharField(source="provider_profile.bio")
    consultation_minutes = serializers.IntegerField(source="provider_profile.consultation_minutes")
    organization_name = serializers.CharField(source="organization.name")

    class Meta:
        model = User
        fields = [
            "id",
            "full_name",
            "specialty",
            "organization",
            "organization_name",
            "bio",
            "consultation_minutes",
            "timezone",
        ]
        read_only_fields = fields


class SlotOutput(serializers.ModelSerializer):
    """``{id, provider, start, end}``."""

    class Meta:
        model = Slot
        fields = ["id", "provider", "start", "end"]
        read_only_fields = fields


class ConsultationOutput(serializers.ModelSerializer):
    """The contract's consultation shape plus names, timestamps and the walk-in marker.

    ``unread_count`` comes from ``context["unread_counts"]`` ({consultation id: count});
    ``provider_notes`` is shown to clinicians only (``context["clinician"]``).
    """

    schema_optional_fields = ("provider_notes",)  # medease/schema.py
    patient_name = serializers.CharField(source="patient.full_name")
    provider_name = serializers.CharField(source="provider.full_name")
    kind = ConsultationKindField(read_only=True)
    unread_count = serializers.SerializerMethodField()

    class Meta:
        model = Consultation
        fields = [
            "id",
            "status",
            "kind",
            "patient",
            "patient_name",
            "provider",
            "provider_name",
            "organization",
            "slot",
            "scheduled_start",
            "scheduled_end",
            "reason",
            "unread_count",
            "created_at",
            "started_at",
            "completed_at",
            "cancelled_at",
            "no_show_at",
            # The front desk's "arrived" mark (null until the patient is checked in).
            "checked_in_at",
            "rescheduled_from",
            "provider_notes",
        ]
        read_only_fields = fields

    def get_unread_count(self, obj: Consultation) -> int:
        return self.context.get("unread_counts", {}).get(obj.pk, 0)

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if not self.context.get("clinician"):
            data.pop("provider_notes", None)
        return data


# --- The consultation body without DRF's field machinery ------------------------------------
#
# The list, the detail, the dashboards and the writes answer with ``ConsultationOutput``'s
# JSON, built here from plain values: a ModelSerializer walks a field object per field per
# row (about a sixth of the list's CPU), and the list reads ``values()`` rows, not model
# instances. ``ConsultationOutput`` stays the schema's description of the body, and
# tests/consultations/test_rows.py checks that both give the same JSON.

# The values() columns a body needs (``provider_notes`` only for clinicians).
CONSULTATION_COLUMNS = (
    "id",
    "status",
    "kind",
    "patient_id",
    "patient__full_name",
    "provider_id",
    "provider__full_name",
    "organization_id",
    "slot_id",
    "scheduled_start",
    "scheduled_end",
    "reason",
    "created_at",
    "started_at",
    "completed_at",
    "cancelled_at",
    "no_show_at",
    "checked_in_at",
    "rescheduled_from_id",
)


def consultation_columns(*, clinician: bool) -> tuple[str, ...]:
    """The ``values()`` columns of a consultation body for this kind of caller."""
    return (*CONSULTATION_COLUMNS, "provider_notes") if clinician else CONSULTATION_COLUMNS


def _iso(value, tz):
    # DRF's DateTimeField: in the active timezone, ISO 8601, "Z" for UTC.
    if value is None:
        return None
    text = value.astimezone(tz).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _iso_utc(value):
    # ``_iso`` for a UTC timezone, with the same text: PostgreSQL's rows are already in
    # UTC (datetime.timezone.utc), so there is nothing to convert and the offset is always
    # "+00:00". Eight of these per row were a tenth of the list's own CPU.
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat()[:-6] + "Z"


# Zones that are UTC at every instant (``_iso_utc`` gives their exact text).
_UTC_ZONES = frozenset({"UTC", "Etc/UTC"})


def _formatter(tz):
    """The datetime formatter for the active timezone ``tz``."""
    if tz is UTC or getattr(tz, "key", None) in _UTC_ZONES:
        return _iso_utc
    return lambda value: _iso(value, tz)


def consultation_rows(
    rows: Iterable[dict], *, unread_counts: dict[int, int] | None = None, clinician: bool
) -> list[dict]:
    """``ConsultationOutput`` bodies of ``values(*consultation_columns(...))`` rows, with
    datetimes in the active timezone and each row's unread count (0 if not given)."""
    iso = _formatter(timezone.get_current_timezone())
    unread = (unread_counts or {}).get
    out = []
    append = out.append
    # One dict display per row, keys in ConsultationOutput's order (the JSON's order).
    for row in rows:
        pk = row["id"]
        body = {
            "id": pk,
            "status": row["status"],
            "kind": row["kind"],
            "patient": row["patient_id"],
            "patient_name": row["patient__full_name"],
            "provider": row["provider_id"],
            "provider_name": row["provider__full_name"],
            "organization": row["organization_id"],
            "slot": row["slot_id"],
            "scheduled_start": iso(row["scheduled_start"]),
            "scheduled_end": iso(row["scheduled_end"]),
            "reason": row["reason"],
            "unread_count": unread(pk, 0),
            "created_at": iso(row["created_at"]),
            "started_at": iso(row["started_at"]),
            "completed_at": iso(row["completed_at"]),
            "cancelled_at": iso(row["cancelled_at"]),
            "no_show_at": iso(row["no_show_at"]),
            "checked_in_at": iso(row["checked_in_at"]),
            "rescheduled_from": row["rescheduled_from_id"],
        }
        if clinician:
            body["provider_notes"] = row["provider_notes"]
        append(body)
    return out


def consultation_values(consultation: Consultation) -> dict:
    """The ``values()`` row of a loaded consultation (its patient and provider are read if
    not loaded yet)."""
    row = {
        name: getattr(consultation, name)
        for name in CONSULTATION_COLUMNS
        if name not in ("patient__full_name", "provider__full_name")
    }
    row["patient__full_name"] = consultation.patient.full_name
    row["provider__full_name"] = consultation.provider.full_name
    row["provider_notes"] = consultation.provider_notes
    return row


class QueueEntryOutput(serializers.ModelSerializer):
    """``{id, provider, position, estimated_wait_minutes, status}`` (position while waiting).

    ``context["estimate"]`` maps a position to minutes (one per provider, see selectors).
    """

    position = serializers.SerializerMethodField()
    estimated_wait_minutes = serializers.SerializerMethodField()

    class Meta:
        model = QueueEntry
        fields = [
            "id",
            "provider",
            "patient",
            "position",
            "estimated_wait_minutes",
            "status",
            "reason",
            "joined_at",
            "called_at",
            "consultation",
        ]
        read_only_fields = fields

    def _position(self, obj: QueueEntry) -> int | None:
        if obj.status != "waiting":
            return None
        return getattr(obj, "position", None)

    def get_position(self, obj: QueueEntry) -> int | None:
        return self._position(obj)

    def get_estimated_wait_minutes(self, obj: QueueEntry) -> int | None:
        estimate = self.context.get("estimate")
        position = self._position(obj)
        if estimate is None or position is None:
            return None
        return estimate(position)


# The attachments app fills these in (consultations.services.records.RecordAttachments);
# described here without importing it.
ATTACHMENT_LIST_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "description": "The attachment as `GET attachments/{id}` answers it, with "
        "short-lived `download_url` and `thumbnail_url`.",
    },
}


class RecordEntryOutput(serializers.ModelSerializer):
    """A medical record entry; ``superseded_by`` is the id of its correction, if any;
    ``attachments`` come from the context (``{entry id: [attachment]}``)."""

    author_name = serializers.CharField(source="author.full_name")
    kind = RecordKindField()
    superseded_by = serializers.SerializerMethodField()
    attachments = serializers.SerializerMethodField()

    class Meta:
        model = MedicalRecordEntry
        fields = [
            "id",
            "patient",
            "author",
            "author_name",
            "organization",
            "consultation",
            "kind",
            "text",
            "supersedes",
            "superseded_by",
            "attachments",
            "created_at",
        ]
        read_only_fields = fields

    def get_superseded_by(self, obj: MedicalRecordEntry) -> int | None:
        correction = getattr(obj, "superseded_by", None)
        return correction.pk if correction is not None else None

    @extend_schema_field(ATTACHMENT_LIST_SCHEMA)
    def get_attachments(self, obj: MedicalRecordEntry) -> list[dict]:
        return self.context.get("attachments", {}).get(obj.pk, [])


class WindowIO(serializers.Serializer):
    weekday = serializers.ChoiceField(choices=Weekday.choices)
    start = serializers.TimeField(source="start_time", format="%H:%M")
    end = serializers.TimeField(source="end_time", format="%H:%M")


class ExceptionIO(serializers.Serializer):
    date = serializers.DateField()
    kind = ExceptionKindField(default=ExceptionKind.OFF)
    start = serializers.TimeField(
        source="start_time", format="%H:%M", required=False, allow_null=True
    )
    end = serializers.TimeField(source="end_time", format="%H:%M", required=False, allow_null=True)
    note = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class AvailabilityIO(serializers.Serializer):
    """``{provider, timezone, windows: [{weekday, start, end}], exceptions: [...]}``;
    times are wall-clock in the provider's timezone, weekday 0 = Monday.

    In a PUT a missing ``windows`` or ``exceptions`` leaves that part as it is and an empty
    list clears it; ``confirm`` cancels the booked visits the change would leave out."""

    provider = serializers.IntegerField(read_only=True)
    timezone = serializers.CharField(read_only=True)
    windows = WindowIO(many=True, required=False)
    exceptions = ExceptionIO(many=True, required=False)
    confirm = serializers.BooleanField(
        write_only=True,
        required=False,
        default=False,
        help_text="Cancel the scheduled consultations this change leaves outside the hours.",
    )


class AvailabilityConfirmInput(serializers.Serializer):
    """``?confirm=1``: the query-string form of the body's ``confirm``."""

    confirm = serializers.BooleanField(required=False, default=False)


# --- Input ---------------------------------------------------------------------------------


class BookInput(serializers.Serializer):
    slot = serializers.IntegerField(min_value=1)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class RescheduleInput(serializers.Serializer):
    slot = serializers.IntegerField(min_value=1)


class CancelInput(serializers.Serializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class CompleteInput(serializers.Serializer):
    provider_notes = serializers.CharField(
        max_length=20000, required=False, allow_blank=True, allow_null=True, default=None
    )


class ConsultationListInput(serializers.Serializer):
    status = serializers.ChoiceField(choices=ConsultationStatus.choices, required=False)


class QueueJoinInput(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class RecordInput(serializers.Serializer):
    kind = RecordKindField()
    text = serializers.CharField(max_length=20000)
    consultation = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    supersedes = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    # Count and ownership are checked by the attachments app; this only bounds the input.
    attachments = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        required=False,
        default=list,
        max_length=100,
        help_text="Ids of your own ready attachments of this patient (at most 10).",
    )


class RecordListInput(serializers.Serializer):
    kind = RecordKindField(required=False)
    current = serializers.BooleanField(required=False, default=False)


class ProviderListInput(serializers.Serializer):
    specialty = serializers.CharField(max_length=120, required=False, allow_blank=True)
    organization = serializers.IntegerField(min_value=1, required=False)
