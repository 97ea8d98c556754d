"""Multi-factor authentication: every MFA write, and the second step of a sign-in.

Clinicians (providers, staff, administrators) add a TOTP authenticator (django-otp's
``TOTPDevice``) and get single-use recovery codes (``RecoveryCodeDevice``, kept hashed).
A user with a confirmed authenticator signs in in two steps: the password gives an
``mfa_token`` (signed, short-lived, bound to the user and their credentials, single use
through a nonce in Redis), and the token with a code gives the session or API token. Wrong
codes count per account in Redis (``RATE_LIMITS["mfa_user"]``, shared by the API and the
console) on top of django-otp's own back-off per device. An organization with
``mfa_required`` makes its providers and staff enrol before anything else.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.core.cache import caches
from django.db import transaction
from django.utils import timezone
from django_otp.models import Device
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services
from accounts.models import RecoveryCode, RecoveryCodeDevice, Role, User
from accounts.recovery import recovery_code_digest, recovery_code_new
from medease import db as db_routing
from medease import ratelimit
from medease.exceptions import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotAuthenticated,
    RateLimited,
    ServiceUnavailable,
)

logger = logging.getLogger("accounts.mfa")

# Error codes clients can act on.
INVALID_CODE = "invalid_code"
MFA_TOKEN_INVALID = "mfa_token_invalid"  # noqa: S105 - an error code, not a secret
ENROLMENT_REQUIRED = "mfa_enrolment_required"

MFA_ROLES = frozenset({Role.PROVIDER, Role.STAFF, Role.ADMIN})
# Roles an organization's mfa_required applies to.
MFA_REQUIRED_ROLES = frozenset({Role.PROVIDER, Role.STAFF})

_CHALLENGE_SALT = "accounts.mfa.challenge"
_WRONG_CODE = "The code is incorrect or has already been used."


def _nonces():
    # The rate-limit cache: its errors surface (the default cache swallows them), so a Redis
    # outage is a clear 503 rather than every mfa_token looking expired.
    return caches["ratelimit"]


def _nonce_key(nonce: str) -> str:
    return f"mfa-challenge:{nonce}"


def mfa_can_enrol(*, user: User) -> bool:
    """Clinicians may add an authenticator; patients sign in with their password only."""
    return user.role in MFA_ROLES or user.is_superuser


def mfa_enabled(*, user: User) -> bool:
    """The user has a confirmed authenticator: every sign-in asks for a code."""
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def mfa_required_by_organization(*, user: User) -> bool:
    organization = user.organization if user.organization_id else None
    return bool(
        user.role in MFA_REQUIRED_ROLES and organization is not None and organization.mfa_required
    )


def mfa_enrolment_pending(*, user: User) -> bool:
    """The clinic requires MFA and the user has no authenticator yet: only enrolment is open.

    No query unless the organization (loaded with the user) requires MFA.
    """
    return mfa_required_by_organization(user=user) and not mfa_enabled(user=user)


def recovery_codes_left(*, user: User) -> int:
    return RecoveryCode.objects.filter(device__user=user).count()


def totp_pending_device(*, user: User) -> TOTPDevice | None:
    """The authenticator being set up (not confirmed yet), if any."""
    return TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-id").first()


def totp_secret(device: TOTPDevice) -> str:
    """The key in base32, as authenticator apps take it when typed in."""
    return device.config_url.split("secret=", 1)[1].split("&", 1)[0]


# --- Code checks, under the shared per-account limit ---------------------------------------


def _by_account(user: User) -> ratelimit.KeyFunc:
    account = str(user.pk)
    return lambda group, request: account


def _wrong_code() -> InvalidInput:
    return InvalidInput(_WRONG_CODE, code=INVALID_CODE, fields={"code": [_WRONG_CODE]})


def _is_totp_shaped(code: str) -> bool:
    return code.isdigit() and len(code) == 6


def _verify(request, *, user: User, code: str, devices) -> Device:
    """Try a code on devices (locked for update) under both limits; the device it matched.

    Raises RateLimited (the account's limit, or django-otp's back-off on every device that
    could have taken it) or InvalidInput ``invalid_code``. Runs its own transaction: a wrong
    code's back-off is committed before the error is raised.
    """
    ratelimit.check(request, name="mfa_user", key=_by_account(user))
    code = "".join(code.split())
    totp_shaped = _is_totp_shaped(code)
    locked_until = None
    matched = None
    with transaction.atomic():
        for device in devices(for_verify=True):
            # A TOTP code is never tried as a recovery code and the other way round, so one
            # kind of mistake does not slow down the other device.
            if isinstance(device, TOTPDevice) != totp_shaped:
                continue
            allowed, info = device.verify_is_allowed()
            if not allowed:
                until = (info or {}).get("locked_until")
                if until is not None and (locked_until is None or until > locked_until):
                    locked_until = until
                continue
            if device.verify_token(code):
                matched = device
                break
    if matched is not None:
        if isinstance(matched, RecoveryCodeDevice):
            logger.info("user %s signed in with a recovery code", user.pk)
        return matched
    ratelimit.count(request, name="mfa_user", key=_by_account(user))
    logger.info("wrong MFA code for user %s", user.pk)
    if locked_until is not None:
        wait = max(1, math.ceil((locked_until - timezone.now()).total_seconds()))
        raise RateLimited(f"Too many wrong codes; try again in {wait} second(s).", retry_after=wait)
    raise _wrong_code()


def _confirmed_devices(user: User):
    def devices(*, for_verify: bool):
        for model in (TOTPDevice, RecoveryCodeDevice):
            queryset = model.objects.filter(user=user, confirmed=True).order_by("id")
            yield from queryset.select_for_update() if for_verify else queryset

    return devices


def mfa_verify(request, *, user: User, code: str) -> Device:
    """Check a code from the user's authenticator or one of their recovery codes (used up)."""
    return _verify(request, user=user, code=code, devices=_confirmed_devices(user))


# --- The second step of a sign-in ---------------------------------------------------------


def mfa_challenge_issue(*, user: User) -> str:
    """After the right password: an mfa_token for this user, good once, for MFA_TOKEN_SECONDS."""
    nonce = secrets.token_urlsafe(16)
    try:
        _nonces().set(_nonce_key(nonce), user.pk, timeout=settings.MFA_TOKEN_SECONDS)
    except Exception as exc:
        raise ServiceUnavailable("Signing in is temporarily unavailable.") from exc
    payload = {"u": user.pk, "n": nonce, "c": user.credentials_changed_at.timestamp()}
    return signing.dumps(payload, salt=_CHALLENGE_SALT)


def _token_invalid() -> NotAuthenticated:
    return NotAuthenticated(
        "This sign-in has expired or was already used; sign in again with your password.",
        code=MFA_TOKEN_INVALID,
    )


@dataclass(frozen=True)
class Challenge:
    user: User
    nonce: str


def mfa_challenge_read(*, mfa_token: str) -> Challenge:
    """The user an unexpired, unused mfa_token was issued to (NotAuthenticated otherwise)."""
    try:
        payload = signing.loads(mfa_token, salt=_CHALLENGE_SALT, max_age=settings.MFA_TOKEN_SECONDS)
        user_id, nonce, changed = int(payload["u"]), str(payload["n"]), float(payload["c"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise _token_invalid() from None
    try:
        issued_to = _nonces().get(_nonce_key(nonce))
    except Exception as exc:
        raise ServiceUnavailable("Signing in is temporarily unavailable.") from exc
    user = User.objects.using(db_routing.PRIMARY).select_related("organization")
    user = user.filter(pk=user_id, is_active=True).first()
    if (
        issued_to != user_id
        or user is None
        # A password change since the first step ends it.
        or user.credentials_changed_at.timestamp() != changed
    ):
        raise _token_invalid()
    return Challenge(user=user, nonce=nonce)


def mfa_challenge_complete(request, *, mfa_token: str, code: str) -> tuple[User, Device]:
    """Second step: a right code ends the challenge (first taker only) and names the user.

    A wrong code is 401 ``invalid_code`` and leaves the mfa_token usable until it expires,
    within the per-account limit.
    """
    challenge = mfa_challenge_read(mfa_token=mfa_token)
    try:
        device = mfa_verify(request, user=challenge.user, code=code)
    except InvalidInput as exc:
        raise NotAuthenticated(exc.message, code=exc.code, fields=exc.fields) from None
    try:
        first = _nonces().delete(_nonce_key(challenge.nonce))
    except Exception as exc:
        raise ServiceUnavailable("Signing in is temporarily unavailable.") from exc
    if not first:
        raise _token_invalid()
    return challenge.user, device


def mfa_login(request, *, mfa_token: str, code: str, user_agent: str = ""):
    """API sign-in, second step: an API token for a right code (see mfa_challenge_complete)."""
    user, _device = mfa_challenge_complete(request, mfa_token=mfa_token, code=code)
    return services.token_issue(user=user, user_agent=user_agent)


# --- Enrolment and recovery ---------------------------------------------------------------


def _require_clinician(user: User) -> None:
    if not mfa_can_enrol(user=user):
        raise Forbidden(
            "Two-factor sign-in is for providers, staff and administrators.",
            code="mfa_not_available",
        )


def totp_enrol_start(*, user: User) -> TOTPDevice:
    """Begin adding an authenticator: a new unconfirmed device (any earlier attempt is dropped)."""
    _require_clinician(user)
    with transaction.atomic():
        if TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).exists():
            raise Conflict(
                "An authenticator is already set up; remove it first to add another.",
                code="mfa_already_enabled",
            )
        TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        return TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)


def totp_enrol_ensure(*, user: User) -> TOTPDevice:
    """The pending device being set up, or a new one (the console's setup page)."""
    return totp_pending_device(user=user) or totp_enrol_start(user=user)


def _recovery_codes_replace(user: User) -> list[str]:
    RecoveryCodeDevice.objects.filter(user=user).delete()
    device = RecoveryCodeDevice.objects.create(user=user, name="Recovery codes", confirmed=True)
    codes = [recovery_code_new() for _ in range(settings.MFA_RECOVERY_CODES)]
    RecoveryCode.objects.bulk_create(
        [RecoveryCode(device=device, digest=recovery_code_digest(code)) for code in codes]
    )
    return codes


def totp_enrol_confirm(request, *, user: User, code: str) -> tuple[TOTPDevice, list[str]]:
    """Confirm the pending authenticator with a code from it; new recovery codes, shown once."""
    _require_clinician(user)
    if totp_pending_device(user=user) is None:
        raise Conflict(
            "No authenticator is being set up; start again.", code="mfa_enrolment_not_started"
        )

    def pending(*, for_verify: bool):
        queryset = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-id")[:1]
        yield from queryset.select_for_update() if for_verify else queryset

    device = _verify(request, user=user, code=code, devices=pending)
    with transaction.atomic():
        confirmed = TOTPDevice.objects.filter(pk=device.pk, confirmed=False).update(confirmed=True)
        if not confirmed:
            raise Conflict("This authenticator was already confirmed.", code="mfa_already_enabled")
        codes = _recovery_codes_replace(user)
    device.confirmed = True
    logger.info("user %s added an authenticator", user.pk)
    return device, codes


def recovery_codes_regenerate(request, *, user: User, code: str) -> list[str]:
    """New recovery codes for a code from the authenticator (or a recovery code); old ones end."""
    _require_clinician(user)
    if not mfa_enabled(user=user):
        raise Conflict("Set up an authenticator first.", code="mfa_not_enabled")
    mfa_verify(request, user=user, code=code)
    with transaction.atomic():
        return _recovery_codes_replace(user)


def totp_disable(request, *, user: User, code: str) -> None:
    """Remove the authenticator and recovery codes, proven with a current code."""
    _require_clinician(user)
    if not mfa_enabled(user=user):
        raise Conflict("No authenticator is set up.", code="mfa_not_enabled")
    mfa_verify(request, user=user, code=code)
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        RecoveryCodeDevice.objects.filter(user=user).delete()
    logger.info("user %s removed their authenticator", user.pk)


def mfa_reset(*, user: User) -> None:
    """Staff: a clinician lost their authenticator and codes. Devices go, sessions end.

    They sign in with their password alone next (and must enrol again when their clinic
    requires MFA).
    """
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        RecoveryCodeDevice.objects.filter(user=user).delete()
        services.user_tokens_revoke_all(user=user)
    logger.warning("two-factor sign-in of user %s reset by staff", user.pk)
