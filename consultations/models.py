"""Clinic core: availability, slots, consultations, the walk-in queue and medical records.

Double booking is prevented by the database, not by Python checks:

* ``consultations_slot_booked_once``: a partial unique index, at most one non-cancelled
  consultation per slot (SQLite and PostgreSQL);
* ``consultations_provider_no_overlap``: on PostgreSQL only, an exclusion constraint so a
  provider never has two overlapping active consultations (migration 0002).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Exists, F, OuterRef, Q
from django.utils.timezone import now

from accounts.models import Role
from consultations.lifecycle import ACTIVE_STATUSES, TREATING_STATUSES, ConsultationStatus


class Weekday(models.IntegerChoices):
    MONDAY = 0, "Monday"
    TUESDAY = 1, "Tuesday"
    WEDNESDAY = 2, "Wednesday"
    THURSDAY = 3, "Thursday"
    FRIDAY = 4, "Friday"
    SATURDAY = 5, "Saturday"
    SUNDAY = 6, "Sunday"


class Availability(models.Model):
    """A weekly recurring working window of a provider, in the provider's own timezone."""

    provider = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="availability_windows"
    )
    weekday = models.PositiveSmallIntegerField(choices=Weekday.choices)
    start_time = models.TimeField(help_text="Local wall-clock time in the provider's timezone.")
    end_time = models.TimeField(help_text="Local wall-clock time; after the start, same day.")

    class Meta:
        ordering = ["provider_id", "weekday", "start_time"]
        verbose_name_plural = "availability windows"
        constraints = [
            models.CheckConstraint(
                condition=Q(start_time__lt=F("end_time")),
                name="consultations_availability_start_before_end",
                violation_error_message="A window must end after it starts.",
            ),
            models.CheckConstraint(
                condition=Q(weekday__gte=0, weekday__lte=6),
                name="consultations_availability_weekday_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_weekday_display()} {self.start_time:%H:%M}-{self.end_time:%H:%M}"


class ExceptionKind(models.TextChoices):
    OFF = "off", "Not available"
    EXTRA = "extra", "Extra hours"


class AvailabilityException(models.Model):
    """A date on which a provider's weekly windows do not apply as usual (day off, extra hours).

    ``off`` without times is the whole day; with times, that part of the day. ``extra`` adds
    a window on that date. Times are local to the provider's timezone.
    """

    provider = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="availability_exceptions"
    )
    date = models.DateField()
    kind = models.CharField(max_length=8, choices=ExceptionKind.choices, default=ExceptionKind.OFF)
    start_time = models.TimeField(null=True, blank=True)
    end_time = models.TimeField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["provider_id", "date", "start_time"]
        constraints = [
            models.CheckConstraint(
                condition=Q(start_time__isnull=True, end_time__isnull=True)
                | Q(start_time__isnull=False, end_time__isnull=False, start_time__lt=F("end_time")),
                name="consultations_exception_times",
                violation_error_message="Give both times (start before end) or neither.",
            ),
            models.CheckConstraint(
                condition=~Q(kind=ExceptionKind.EXTRA) | Q(start_time__isnull=False),
                name="consultations_exception_extra_has_times",
                violation_error_message="Extra hours need a start and an end time.",
            ),
        ]
        indexes = [models.Index(fields=["provider", "date"], name="cons_exception_date_idx")]

    def __str__(self) -> str:
        return f"{self.date} {self.get_kind_display()}"


class Slot(models.Model):
    """A bookable interval of a provider, materialized from availability; stored in UTC."""

    provider = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="slots"
    )
    start = models.DateTimeField()
    end = models.DateTimeField()
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["start", "id"]
        constraints = [
            # Makes materialization idempotent: a second run inserts nothing.
            models.UniqueConstraint(
                fields=["provider", "start"], name="consultations_slot_provider_start"
            ),
            models.CheckConstraint(
                condition=Q(start__lt=F("end")), name="consultations_slot_start_before_end"
            ),
        ]

    def __str__(self) -> str:
        return f"Slot {self.pk} of provider {self.provider_id} at {self.start:%Y-%m-%d %H:%M}Z"


# --- Who may see what: one policy for the API, the websocket and the staff console ----------


# The rule as data, read by clinic_scope and rendered to SQL by clinic_scope_sql: a role
# sees the rows whose column (first) equals the user's attribute (second).
SCOPE_BY_ROLE: dict[str, tuple[str, str]] = {
    Role.PATIENT: ("patient_id", "pk"),
    Role.PROVIDER: ("provider_id", "pk"),
    Role.STAFF: ("organization_id", "organization_id"),
}


def clinic_scope(user) -> tuple[str, int] | None:
    """The (field, value) a consultation or queue entry must have for ``user`` to see it:
    patients their own, providers theirs, clinic staff their clinic's. ``None``: no row (no
    clinic role, or staff without a clinic). Superusers see every row; ``visible_to``
    handles them."""
    if not getattr(user, "is_authenticated", False):
        return None
    rule = SCOPE_BY_ROLE.get(user.role)
    if rule is None:
        return None
    field, attribute = rule
    value = getattr(user, attribute)
    return (field, value) if value else None


def clinic_scope_sql(*, user: str, row: str) -> str:
    """The same rule (superusers included) as a SQL condition on the aliases of a user row
    (``accounts_user``) and of a consultation or queue entry row, for a statement that
    checks access and writes at once (messaging.services.message_send_at_once). A NULL
    clinic matches nothing, as ``clinic_scope`` gives staff without one no rows."""
    column = {"pk": "id", "organization_id": "organization_id"}
    cases = " OR ".join(
        f"({user}.role = '{role}' AND {row}.{field} = {user}.{column[attribute]})"
        for role, (field, attribute) in SCOPE_BY_ROLE.items()
    )
    return f"({user}.is_superuser OR {cases})"


class ClinicQuerySet(models.QuerySet):
    """Rows with a patient, a provider and a clinic (consultations, queue entries)."""

    def visible_to(self, user) -> ClinicQuerySet:
        """The rows ``user`` may see (another user's row is 404 wherever it is asked for)."""
        if getattr(user, "is_superuser", False):
            return self.all()
        scope = clinic_scope(user)
        return self.filter(**{scope[0]: scope[1]}) if scope else self.none()


class ClinicRowMixin:
    def is_visible_to(self, user) -> bool:
        """``visible_to`` for a row already loaded (no query)."""
        if getattr(user, "is_superuser", False):
            return True
        scope = clinic_scope(user)
        return scope is not None and getattr(self, scope[0]) == scope[1]


class ConsultationQuerySet(ClinicQuerySet):
    def treating(self, user) -> ConsultationQuerySet:
        """The consultations that make ``user`` (or their clinic) treat the patient."""
        return self.visible_to(user).filter(status__in=TREATING_STATUSES)


class ConsultationKind(models.TextChoices):
    BOOKED = "booked", "Booked slot"
    WALK_IN = "walk_in", "Walk-in"


class Consultation(ClinicRowMixin, models.Model):
    """A patient's consultation with a provider: a booked slot or a walk-in, and its lifecycle.

    ``status`` is written only by ``consultations.services.lifecycle`` following the table
    in ``consultations.lifecycle`` (and set once, on creation, by booking and the queue).
    """

    patient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="consultations_as_patient"
    )
    provider = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="consultations_as_provider",
    )
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="consultations"
    )
    # SET_NULL: a slot withdrawn from availability after a cancellation may be deleted; the
    # consultation keeps its own copy of the times.
    slot = models.ForeignKey(
        Slot, on_delete=models.SET_NULL, null=True, blank=True, related_name="consultations"
    )
    kind = models.CharField(
        max_length=8, choices=ConsultationKind.choices, default=ConsultationKind.BOOKED
    )
    status = models.CharField(
        max_length=16, choices=ConsultationStatus.choices, default=ConsultationStatus.SCHEDULED
    )
    reason = models.TextField(blank=True)
    provider_notes = models.TextField(blank=True)
    scheduled_start = models.DateTimeField()
    scheduled_end = models.DateTimeField()
    created_at = models.DateTimeField(default=now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    no_show_at = models.DateTimeField(null=True, blank=True)
    # Facts of the video visit (lifecycle.FACTS): when each side first joined the call.
    patient_joined_at = models.DateTimeField(null=True, blank=True)
    provider_joined_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    cancellation_reason = models.CharField(max_length=200, blank=True)
    # The front desk's "arrived" mark for a booked visit (lifecycle.FACTS "checked_in").
    checked_in_at = models.DateTimeField(null=True, blank=True)
    checked_in_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    # One-to-one: a consultation is rescheduled at most once (the database says so).
    rescheduled_from = models.OneToOneField(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="rescheduled_to",
    )
    # The client's Idempotency-Key for the booking request ("" when none was sent).
    idempotency_key = models.CharField(max_length=128, blank=True)

    objects = ConsultationQuerySet.as_manager()

    class Meta:
        ordering = ["scheduled_start", "id"]
        constraints = [
            # A slot has at most one booking that is not cancelled, decided by the database
            # under concurrency. Completed and no-show bookings keep the slot: it was used.
            models.UniqueConstraint(
                fields=["slot"],
                condition=Q(slot__isnull=False) & ~Q(status=ConsultationStatus.CANCELLED),
                name="consultations_slot_booked_once",
                violation_error_message="This slot is already booked.",
            ),
            models.UniqueConstraint(
                fields=["patient", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="consultations_patient_idempotency_key",
            ),
            models.CheckConstraint(
                condition=Q(scheduled_start__lt=F("scheduled_end")),
                name="consultations_consultation_start_before_end",
            ),
        ]
        indexes = [
            models.Index(fields=["provider", "scheduled_start"], name="cons_provider_start_idx"),
            models.Index(fields=["patient", "scheduled_start"], name="cons_patient_start_idx"),
            models.Index(fields=["organization", "scheduled_start"], name="cons_org_start_idx"),
            models.Index(fields=["status", "scheduled_end"], name="cons_status_end_idx"),
            # The active rows only (a few percent of a large table): open slots' overlap check
            # and a patient's upcoming visits read them directly instead of intersecting every
            # active row of the network with the provider's or patient's whole history
            # (docs/performance.md, "Query plans at size").
            models.Index(
                fields=["provider", "scheduled_start"],
                condition=Q(status__in=ACTIVE_STATUSES),
                name="cons_provider_active_idx",
            ),
            models.Index(
                fields=["patient", "scheduled_end"],
                condition=Q(status__in=ACTIVE_STATUSES),
                name="cons_patient_active_end_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Consultation {self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


class QueueStatus(models.TextChoices):
    WAITING = "waiting", "Waiting"
    CALLED = "called", "Called"
    LEFT = "left", "Left"
    EXPIRED = "expired", "Expired"


class QueueEntry(ClinicRowMixin, models.Model):
    """A patient waiting in a provider's walk-in queue; calling it starts a consultation."""

    provider = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="queue_entries"
    )
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="queue_entries"
    )
    patient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="queue_entries_as_patient"
    )
    status = models.CharField(
        max_length=8, choices=QueueStatus.choices, default=QueueStatus.WAITING
    )
    reason = models.TextField(blank=True)
    joined_at = models.DateTimeField(default=now)
    called_at = models.DateTimeField(null=True, blank=True)
    left_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    # Clinic staff took the entry out of the queue (status "left"): who, and why.
    removed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    removal_reason = models.CharField(max_length=200, blank=True)
    consultation = models.OneToOneField(
        Consultation,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="queue_entry",
    )

    objects = ClinicQuerySet.as_manager()

    class Meta:
        ordering = ["joined_at", "id"]
        verbose_name_plural = "queue entries"
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "patient"],
                condition=Q(status=QueueStatus.WAITING),
                name="consultations_queue_one_waiting_entry",
                violation_error_message="This patient is already waiting for this provider.",
            ),
        ]
        indexes = [
            models.Index(fields=["provider", "status", "joined_at"], name="cons_queue_waiting_idx"),
        ]

    def __str__(self) -> str:
        return f"Queue entry {self.pk} ({self.status})"


class RecordKind(models.TextChoices):
    NOTE = "note", "Note"
    DIAGNOSIS = "diagnosis", "Diagnosis"
    PRESCRIPTION = "prescription", "Prescription"
    ALLERGY = "allergy", "Allergy"


class MedicalRecordQuerySet(models.QuerySet):
    def visible_to(self, user) -> MedicalRecordQuerySet:
        """Entries ``user`` may read: the patient all of theirs; a treating provider and the
        treating clinic's staff the entries written in their clinic."""
        if getattr(user, "is_superuser", False):
            return self.all()
        if not getattr(user, "is_authenticated", False):
            return self.none()
        if user.role == Role.PATIENT:
            return self.filter(patient_id=user.pk)
        if user.role in (Role.PROVIDER, Role.STAFF) and user.organization_id:
            treats = Consultation.objects.treating(user).filter(patient_id=OuterRef("patient_id"))
            return self.filter(Exists(treats), organization_id=user.organization_id)
        return self.none()


class MedicalRecordEntry(models.Model):
    """One entry of a patient's medical record. Never changed or deleted: a correction is a
    new entry that ``supersedes`` the old one (on PostgreSQL a trigger enforces this too)."""

    patient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="medical_records"
    )
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # The clinic the entry was written in; clinicians read their clinic's entries.
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="medical_records"
    )
    consultation = models.ForeignKey(
        Consultation,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="record_entries",
    )
    kind = models.CharField(max_length=16, choices=RecordKind.choices)
    text = models.TextField()
    # One-to-one: an entry is superseded at most once, even by two concurrent corrections.
    supersedes = models.OneToOneField(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="superseded_by",
    )
    created_at = models.DateTimeField(default=now, editable=False)

    objects = MedicalRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "medical record entries"
        indexes = [
            models.Index(fields=["patient", "organization", "-id"], name="cons_record_patient_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.pk} for patient {self.patient_id}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise RuntimeError("Medical record entries are immutable; write a correction.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise RuntimeError("Medical record entries are never deleted; write a correction.")
