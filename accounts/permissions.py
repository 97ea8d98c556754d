"""Role rules of the accounts app that hold across the API (no object involved)."""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from accounts import mfa
from medease.exceptions import Forbidden


class MfaEnrolled(BasePermission):
    """Clinicians of a clinic that requires MFA reach nothing but enrolment until enrolled.

    In DEFAULT_PERMISSION_CLASSES; the enrolment endpoints and logout name their own
    permissions instead, so they stay open.
    """

    def has_permission(self, request, view) -> bool:
        user = request.user
        if user is not None and user.is_authenticated and mfa.mfa_enrolment_pending(user=user):
            raise Forbidden(
                "Your clinic requires two-factor sign-in: set up an authenticator first "
                "(POST /api/v1/auth/mfa/totp, then auth/mfa/totp/confirm).",
                code=mfa.ENROLMENT_REQUIRED,
            )
        return True
