"""Every write to accounts: users, profiles, organizations and API tokens."""

from __future__ import annotations

import logging
import secrets
import smtplib
from collections.abc import Iterable
from datetime import date

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError, QuerySet
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts import token_cache
from accounts.models import (
    CONSULTATION_MINUTES_MAX,
    CONSULTATION_MINUTES_MIN,
    AuthToken,
    Organization,
    PatientProfile,
    ProviderProfile,
    Role,
    User,
    validate_timezone,
)
from accounts.tokens import TokenFacts, token_digest
from medease import db as db_routing
from medease.exceptions import Conflict, InvalidInput, NotAuthenticated

logger = logging.getLogger("accounts")

# The error code of a wrong current password (counted like a failed login).
WRONG_PASSWORD = "wrong_password"  # noqa: S105 - an error code, not a secret


def normalize_email(email: str) -> str:
    return email.strip().lower()


def _check_password(password: str, *, user: User | None = None, field: str = "password") -> None:
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise InvalidInput("The password is too weak.", fields={field: exc.messages}) from exc


def _check_timezone(value: str) -> None:
    try:
        validate_timezone(value)
    except ValidationError as exc:
        raise InvalidInput("Unknown time zone.", fields={"timezone": exc.messages}) from exc


def organization_create(*, name: str, slug: str, timezone_name: str = "UTC") -> Organization:
    """Create a clinic."""
    _check_timezone(timezone_name)
    try:
        with transaction.atomic():
            return Organization.objects.create(name=name, slug=slug, timezone=timezone_name)
    except IntegrityError as exc:
        raise Conflict("An organization with this slug exists.", code="slug_taken") from exc


def user_create(
    *,
    email: str,
    password: str | None,
    full_name: str,
    role: str = Role.PATIENT,
    organization: Organization | None = None,
    timezone_name: str = "UTC",
    specialty: str = "",
    bio: str = "",
    consultation_minutes: int = 30,
    validate: bool = True,
) -> User:
    """Create a user of any role with the profile that role needs (one transaction)."""
    email = normalize_email(email)
    _check_timezone(timezone_name)
    if role in (Role.PROVIDER, Role.STAFF) and organization is None:
        raise InvalidInput(
            "Providers and staff need an organization.",
            fields={"organization": ["This field is required for this role."]},
        )
    if role == Role.PROVIDER and not (
        CONSULTATION_MINUTES_MIN <= consultation_minutes <= CONSULTATION_MINUTES_MAX
    ):
        # Checked here so the caller hears why, not a constraint error read as "email taken".
        low, high = CONSULTATION_MINUTES_MIN, CONSULTATION_MINUTES_MAX
        message = f"A consultation lasts {low} to {high} minutes."
        raise InvalidInput(message, fields={"consultation_minutes": [message]})
    if role == Role.PATIENT and organization is not None:
        raise InvalidInput(
            "Patients belong to no organization.",
            fields={"organization": ["Patients have no organization."]},
        )
    user = User(
        email=email,
        full_name=full_name.strip(),
        role=role,
        organization=organization,
        timezone=timezone_name,
    )
    if validate:
        _check_password(password, user=user)
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
            if role == Role.PATIENT:
                PatientProfile.objects.create(user=user)
            elif role == Role.PROVIDER:
                ProviderProfile.objects.create(
                    user=user,
                    specialty=specialty,
                    bio=bio,
                    consultation_minutes=consultation_minutes,
                )
    except IntegrityError as exc:
        # The case-insensitive unique index decides, also between two concurrent sign-ups.
        raise Conflict(
            "An account with this email already exists.",
            code="email_taken",
            fields={"email": ["An account with this email already exists."]},
        ) from exc
    return user


def user_ensure_profile(*, user: User) -> None:
    """Give a user the profile their role needs, if they have none yet (idempotent)."""
    if user.role == Role.PROVIDER:
        ProviderProfile.objects.get_or_create(user=user)
    elif user.role == Role.PATIENT:
        PatientProfile.objects.get_or_create(user=user)


def patient_register(*, email: str, password: str, full_name: str, timezone_name: str = "UTC"):
    """Self-service sign-up: always a patient."""
    return user_create(
        email=email,
        password=password,
        full_name=full_name,
        role=Role.PATIENT,
        timezone_name=timezone_name,
    )


def patient_register_at_desk(
    *,
    organization: Organization,
    email: str,
    full_name: str,
    phone: str = "",
    date_of_birth: date | None = None,
    timezone_name: str | None = None,
) -> User:
    """A clinic's front desk registers a patient: no password yet, known to that clinic; after
    commit they get an e-mail with a link to set their password."""
    with transaction.atomic():
        # password=None: an unusable password until they follow the link.
        user = user_create(
            email=email,
            password=None,
            full_name=full_name,
            role=Role.PATIENT,
            timezone_name=timezone_name or organization.timezone,
            validate=False,
        )
        PatientProfile.objects.filter(user=user).update(
            phone=phone.strip(),
            date_of_birth=date_of_birth,
            registered_by_organization=organization,
        )
        transaction.on_commit(
            lambda: patient_set_password_email_send(user=user, organization=organization)
        )
    return user


def patient_set_password_link(*, user: User) -> str:
    """The absolute link (settings.SITE_URL) to the page where the user sets a password; it
    stops working once a password is set (the token hashes the current one)."""
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    path = reverse("frontdesk:set_password", kwargs={"uidb64": uid, "token": token})
    return f"{settings.SITE_URL}{path}"


def patient_set_password_email_send(*, user: User, organization: Organization) -> bool:
    """Send the set-password e-mail now (called on commit). Not through the outbox: the link
    is a credential and must not be stored. A failure is logged and reported, not raised."""
    context = {
        "user": user,
        "organization": organization,
        "link": patient_set_password_link(user=user),
        "valid_days": max(1, settings.PASSWORD_RESET_TIMEOUT // 86400),
    }
    try:
        send_mail(
            subject=f"{organization.name}: set your MedEase password",
            message=render_to_string("accounts/email/desk_welcome.txt", context),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[user.email],
        )
    except (OSError, smtplib.SMTPException):
        logger.warning("set-password e-mail to user %s not sent", user.pk, exc_info=True)
        return False
    return True


def user_update_profile(
    *, user: User, full_name: str | None = None, timezone_name: str | None = None
) -> User:
    """Change the fields a user may edit about themselves."""
    if timezone_name is not None:
        _check_timezone(timezone_name)
        user.timezone = timezone_name
    if full_name is not None:
        user.full_name = full_name.strip()
    user.save(update_fields=["full_name", "timezone"])
    return user


def token_issue(*, user: User, user_agent: str = "") -> tuple[str, AuthToken]:
    """Create a token; the raw value is returned once and never stored."""
    raw = secrets.token_urlsafe(32)
    now = timezone.now()
    token = AuthToken.objects.create(
        digest=token_digest(raw),
        user=user,
        created_at=now,
        last_used_at=now,
        expires_at=now + settings.TOKEN_ABSOLUTE_LIFETIME,
        user_agent=user_agent[:200],
    )
    return raw, token


def auth_authenticate(*, email: str, password: str) -> User:
    """The active user with these credentials, or NotAuthenticated.

    Unknown email and wrong password raise the same error; Django's ModelBackend also
    hashes a dummy password for unknown users so the two take about the same time.
    """
    user = authenticate(username=normalize_email(email), password=password)
    if user is None:
        raise NotAuthenticated("Email or password is incorrect.", code="invalid_credentials")
    return user


def auth_login(*, email: str, password: str, user_agent: str = "") -> tuple[str, AuthToken]:
    """Check credentials and issue a token (no second factor: see accounts.mfa)."""
    user = auth_authenticate(email=email, password=password)
    return token_issue(user=user, user_agent=user_agent)


def token_touch(*, token: AuthToken) -> None:
    """Slide the idle expiry, at most once per TOKEN_TOUCH_INTERVAL.

    Written straight to the primary with an explicit alias so that merely using a token
    does not count as "this request wrote" for read-your-writes routing.
    """
    now = timezone.now()
    if now - token.last_used_at < settings.TOKEN_TOUCH_INTERVAL:
        return
    AuthToken.objects.using(db_routing.PRIMARY).filter(pk=token.pk).update(last_used_at=now)
    token.last_used_at = now
    token_cache.replace(
        token.digest,
        TokenFacts(
            token_id=token.pk,
            user_id=token.user_id,
            created_at=token.created_at,
            expires_at=token.expires_at,
            last_used_at=now,
        ),
    )


def token_revoke(*, token: AuthToken) -> None:
    """Logout: this token stops working at once, on every node."""
    # The tombstone goes in first, so no node can re-cache the token while we commit.
    token_cache.forget([token.digest])
    AuthToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    _on_credentials_revoked(user_id=token.user_id)


def user_tokens_revoke_all(*, user: User) -> int:
    """Revoke every token of a user (password change, deactivation)."""
    live = AuthToken.objects.filter(user=user, revoked_at__isnull=True)
    token_cache.forget(list(live.values_list("digest", flat=True)))
    revoked = live.update(revoked_at=timezone.now())
    _on_credentials_revoked(user_id=user.pk)
    return revoked


# What a console edit may change that decides who someone is or what they may reach: a
# change to any of these ends the user's API tokens and open sockets.
CREDENTIAL_FIELDS = frozenset(
    {
        "email",
        "password",
        "is_active",
        "role",
        "organization",
        "is_superuser",
        "groups",
        "user_permissions",
    }
)


def user_save_by_staff(*, user: User, changed_fields: Iterable[str]) -> User:
    """Save a user edited in the console; a credential or access change revokes their sessions."""
    with transaction.atomic():
        user.save()
        if CREDENTIAL_FIELDS.intersection(changed_fields):
            user_tokens_revoke_all(user=user)
    return user


def user_set_password(*, user: User, password: str | None) -> None:
    """Set a password for someone (staff), or disable it with None; all their tokens are revoked.

    The caller has validated the password (the console's form runs the validators).
    """
    with transaction.atomic():
        if password is None:
            user.set_unusable_password()
            user.credentials_changed_at = timezone.now()
        else:
            user.set_password(password)
        user.save(update_fields=["password", "credentials_changed_at"])
        user_tokens_revoke_all(user=user)


def _tokens_end(tokens: QuerySet, *, delete: bool) -> int:
    rows = list(tokens.values_list("pk", "digest", "user_id"))
    if not rows:
        return 0
    # Tombstones first, so no node can re-cache a token while we commit.
    token_cache.forget([digest for _pk, digest, _user_id in rows])
    ended = AuthToken.objects.filter(pk__in=[pk for pk, _digest, _user_id in rows])
    if delete:
        count, _ = ended.delete()
    else:
        count = ended.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
    for user_id in sorted({user_id for _pk, _digest, user_id in rows}):
        _on_credentials_revoked(user_id=user_id)
    return count


def tokens_revoke(*, tokens: QuerySet) -> int:
    """Revoke some tokens (console): they stop at once on every node, their users' sockets close."""
    with transaction.atomic():
        return _tokens_end(tokens, delete=False)


def tokens_delete(*, tokens: QuerySet) -> int:
    """Delete some tokens (console), revoking them first everywhere as tokens_revoke does."""
    with transaction.atomic():
        return _tokens_end(tokens, delete=True)


def user_change_password(*, user: User, old_password: str, new_password: str) -> None:
    """Change a password; all the user's tokens are revoked."""
    if not user.check_password(old_password):
        raise InvalidInput(
            "The current password is incorrect.",
            code=WRONG_PASSWORD,
            fields={"old_password": ["The current password is incorrect."]},
        )
    _check_password(new_password, user=user, field="new_password")
    with transaction.atomic():
        user.set_password(new_password)
        user.save(update_fields=["password", "credentials_changed_at"])
        user_tokens_revoke_all(user=user)


def user_deactivate(*, user: User) -> None:
    """Deactivate an account: it can no longer sign in, its tokens stop working."""
    with transaction.atomic():
        user.is_active = False
        user.save(update_fields=["is_active"])
        user_tokens_revoke_all(user=user)


def patient_delete(*, patient: User) -> User:
    """A patient's "deletion": sign-in ends, personal details are erased, the rows stay.

    Consultations, records and the audit trail keep the patient's id (medical and audit
    retention, docs/adr/0006-audit-retention-and-user-deletion.md); nothing that names or
    reaches the person is left. Idempotent.
    """
    if patient.role != Role.PATIENT:
        raise InvalidInput("Only a patient's account is deleted this way.", code="not_a_patient")
    now = timezone.now()
    with transaction.atomic():
        patient.email = f"deleted-{patient.pk}@deleted.invalid"
        patient.full_name = "Deleted patient"
        patient.is_active = False
        patient.set_unusable_password()
        patient.credentials_changed_at = now
        patient.save(
            update_fields=["email", "full_name", "is_active", "password", "credentials_changed_at"]
        )
        PatientProfile.objects.update_or_create(
            user=patient,
            defaults={"date_of_birth": None, "phone": "", "deleted_at": now},
        )
        user_tokens_revoke_all(user=patient)
    return patient


def user_delete(*, user: User) -> None:
    """Delete an account that is not a patient's; its sessions end everywhere first.

    The audit trail keeps the id (no foreign key constraint); rows that must outlive the
    user (consultations, records) protect it and the deletion is refused.
    """
    if user.role == Role.PATIENT:
        raise InvalidInput("A patient's account is anonymized, not deleted.", code="is_patient")
    user_id = user.pk
    with transaction.atomic():
        digests = list(AuthToken.objects.filter(user=user).values_list("digest", flat=True))
        try:
            user.delete()  # its tokens go with it
        except ProtectedError as exc:
            raise Conflict(
                "This account has consultations or records and cannot be deleted; "
                "deactivate it instead.",
                code="user_protected",
            ) from exc
        token_cache.forget(digests)
        _on_credentials_revoked(user_id=user_id)


def tokens_purge_expired() -> int:
    """Delete tokens past their absolute expiry or revoked more than a day ago."""
    now = timezone.now()
    deleted, _ = AuthToken.objects.filter(expires_at__lt=now).delete()
    stale_revoked, _ = AuthToken.objects.filter(
        revoked_at__lt=now - timezone.timedelta(days=1)
    ).delete()
    return deleted + stale_revoked


# The token cache holds a snapshot of each token's user and organization
# (accounts.token_cache). Any save of either outdates the snapshots of the user's live
# tokens once it commits, whichever path saved it (these services, the console, the admin);
# credential changes also revoke the tokens (tombstones), which wins over any snapshot.
def _user_snapshots_outdate(*, tokens: QuerySet) -> None:
    live = tokens.filter(revoked_at__isnull=True)
    token_cache.users_changed(list(live.values_list("digest", flat=True)))


def _snapshots_outdate_now_and_on_commit(
    *, user_id: int | None = None, organization_id: int | None = None, using: str | None
) -> None:
    def outdate() -> None:
        tokens = AuthToken.objects.using(db_routing.PRIMARY)
        if user_id is not None:
            tokens = tokens.filter(user_id=user_id)
        else:
            tokens = tokens.filter(user__organization_id=organization_id)
        _user_snapshots_outdate(tokens=tokens)

    # Now, so that this transaction's own later reads refill; and again once committed,
    # since a request that read the old row meanwhile may have stored it under the first
    # version (the second one outdates it).
    outdate()
    transaction.on_commit(outdate, using=using)


@receiver(post_save, sender=User, dispatch_uid="accounts.user_snapshots_outdate")
def _user_saved(sender, instance, created=False, update_fields=None, raw=False, **kwargs):
    if raw or created or settings.TOKEN_CACHE_SECONDS <= 0:
        return
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # not part of what authentication or the API reads
    _snapshots_outdate_now_and_on_commit(user_id=instance.pk, using=kwargs.get("using"))


@receiver(post_save, sender=Organization, dispatch_uid="accounts.org_snapshots_outdate")
def _organization_saved(sender, instance, created=False, raw=False, **kwargs):
    if raw or created or settings.TOKEN_CACHE_SECONDS <= 0:
        return
    _snapshots_outdate_now_and_on_commit(organization_id=instance.pk, using=kwargs.get("using"))


# Listeners that close a user's open websockets when their credentials are revoked; the
# messaging app registers one (kept as a hook so accounts does not import messaging).
_revocation_listeners: list = []


def on_credentials_revoked(listener) -> None:
    _revocation_listeners.append(listener)


def _on_credentials_revoked(*, user_id: int) -> None:
    for listener in _revocation_listeners:
        transaction.on_commit(lambda listener=listener: listener(user_id=user_id))
