"""Organizations, users with roles, their profiles, and API tokens."""

from __future__ import annotations

import zoneinfo

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils.timezone import now
from django_otp.models import Device, ThrottlingMixin

from accounts.recovery import recovery_code_matches


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not a known IANA time zone (e.g. Europe/Paris).")


class Organization(models.Model):
    """A clinic: providers and staff belong to exactly one."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=60, unique=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    created_at = models.DateTimeField(default=now, editable=False)
    mfa_required = models.BooleanField(
        "MFA required",
        default=False,
        help_text=(
            "Providers and staff must sign in with an authenticator app; those without one "
            "are asked to set it up before they can do anything else."
        ),
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    PATIENT = "patient", "Patient"
    PROVIDER = "provider", "Provider"
    STAFF = "staff", "Staff"
    ADMIN = "admin", "Administrator"


class UserManager(BaseUserManager):
    """Creates users by email; writes outside tests go through accounts.services."""

    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **fields) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.full_clean(exclude=["password"])
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields) -> User:
        fields.setdefault("role", Role.ADMIN)
        fields.setdefault("full_name", "Administrator")
        fields["is_superuser"] = True
        return self.create_user(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    """Anyone who signs in: patients, providers, staff and administrators, by email."""

    email = models.EmailField(max_length=254, unique=True)
    full_name = models.CharField(max_length=200)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.PATIENT)
    organization = models.ForeignKey(
        Organization,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="members",
        help_text="Required for providers and staff; patients belong to no organization.",
    )
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=now, editable=False)
    # Tokens issued before this moment are refused: set on every password change, so a
    # password changed anywhere (API, admin, shell) revokes the old sessions.
    credentials_changed_at = models.DateTimeField(default=now, editable=False)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["full_name"]

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
            models.CheckConstraint(
                condition=(
                    models.Q(role=Role.PATIENT, organization__isnull=True)
                    | models.Q(role__in=[Role.PROVIDER, Role.STAFF], organization__isnull=False)
                    | models.Q(role=Role.ADMIN)
                ),
                name="accounts_user_role_organization",
                violation_error_message=(
                    "Providers and staff need an organization; patients have none."
                ),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.full_name} <{self.email}>"

    def set_password(self, raw_password: str | None) -> None:
        super().set_password(raw_password)
        self.credentials_changed_at = now()

    @property
    def is_staff(self) -> bool:
        """Django admin access: clinic staff and administrators."""
        return self.is_active and (self.role in (Role.STAFF, Role.ADMIN) or self.is_superuser)

    @property
    def is_patient(self) -> bool:
        return self.role == Role.PATIENT

    @property
    def is_provider(self) -> bool:
        return self.role == Role.PROVIDER

    @property
    def is_clinic_staff(self) -> bool:
        return self.role == Role.STAFF

    def has_perm(self, perm: str, obj=None) -> bool:
        from medease.permissions import staff_console_allows

        if self.is_active and self.role == Role.STAFF and staff_console_allows(perm):
            return True
        return super().has_perm(perm, obj)

    def has_module_perms(self, app_label: str) -> bool:
        from medease.permissions import staff_console_allows_app

        if self.is_active and self.role == Role.STAFF and staff_console_allows_app(app_label):
            return True
        return super().has_module_perms(app_label)


CONSULTATION_MINUTES_MIN = 1
CONSULTATION_MINUTES_MAX = 480  # a working day


class ProviderProfile(models.Model):
    """What patients see of a provider, and how long their consultations last."""

    user = models.OneToOneField(
        User, on_delete=models.CASCADE, primary_key=True, related_name="provider_profile"
    )
    specialty = models.CharField(max_length=120, db_index=True)
    bio = models.TextField(blank=True)
    # Slots are stepped by this length: 0 would never advance, so the range is enforced by
    # the field (forms), a check constraint (every other writer) and the slot generator.
    consultation_minutes = models.PositiveSmallIntegerField(
        default=30,
        validators=[
            MinValueValidator(CONSULTATION_MINUTES_MIN),
            MaxValueValidator(CONSULTATION_MINUTES_MAX),
        ],
        help_text=(
            f"Length of one consultation, {CONSULTATION_MINUTES_MIN} to "
            f"{CONSULTATION_MINUTES_MAX} minutes."
        ),
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(
                    consultation_minutes__gte=CONSULTATION_MINUTES_MIN,
                    consultation_minutes__lte=CONSULTATION_MINUTES_MAX,
                ),
                name="accounts_provider_minutes_range",
                violation_error_message=(
                    f"A consultation lasts {CONSULTATION_MINUTES_MIN} to "
                    f"{CONSULTATION_MINUTES_MAX} minutes."
                ),
            )
        ]

    def __str__(self) -> str:
        return f"{self.user.full_name} ({self.specialty})"


class PatientProfile(models.Model):
    """A patient's personal details (PHI). Soft-deleted only: ``deleted_at`` is set."""

    user = models.OneToOneField(
        User, on_delete=models.CASCADE, primary_key=True, related_name="patient_profile"
    )
    date_of_birth = models.DateField(null=True, blank=True)
    phone = models.CharField(max_length=32, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    # The clinic whose front desk registered the patient (they are known there before any
    # visit); patients who signed up themselves have none.
    registered_by_organization = models.ForeignKey(
        Organization,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="registered_patients",
    )

    def __str__(self) -> str:
        return f"Patient profile of {self.user.full_name}"


class AuthToken(models.Model):
    """An API bearer token. Only its SHA-256 digest is stored; the token is shown once."""

    digest = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="auth_tokens")
    created_at = models.DateTimeField(default=now)
    last_used_at = models.DateTimeField(default=now)
    expires_at = models.DateTimeField(help_text="Absolute expiry, whatever the activity.")
    revoked_at = models.DateTimeField(null=True, blank=True)
    user_agent = models.CharField(max_length=200, blank=True)

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="accounts_token_expires_idx")]

    def __str__(self) -> str:
        return f"Token {self.pk} of user {self.user_id}"


class RecoveryCodeDevice(ThrottlingMixin, Device):
    """A user's single-use MFA recovery codes, as a django-otp device; only digests are kept."""

    class Meta:
        verbose_name = "MFA recovery codes"
        verbose_name_plural = "MFA recovery codes"

    def get_throttle_factor(self) -> int:
        # The same back-off as the TOTP device: 1, 2, 4, ... seconds after each failure.
        return getattr(settings, "OTP_TOTP_THROTTLE_FACTOR", 1)

    def verify_token(self, token) -> bool:
        """Consume the code if it is one of ours (each works once), under django-otp's throttle."""
        allowed, _ = self.verify_is_allowed()
        if not allowed:
            return False
        match = next(
            (code for code in self.codes.all() if recovery_code_matches(code.digest, str(token))),
            None,
        )
        if match is None:
            self.throttle_increment()
            return False
        # A conditional delete: of two requests racing with one code, only one removes it.
        deleted, _ = RecoveryCode.objects.filter(pk=match.pk).delete()
        if not deleted:
            return False
        self.throttle_reset()
        return True


class RecoveryCode(models.Model):
    """One unused recovery code: a random salt and the SHA-256 of salt and code, never the code."""

    device = models.ForeignKey(RecoveryCodeDevice, on_delete=models.CASCADE, related_name="codes")
    digest = models.CharField(max_length=97)

    def __str__(self) -> str:
        return f"Recovery code {self.pk} of device {self.device_id}"
