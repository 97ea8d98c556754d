"""The authentication backend: Django's, with the session's user read in one query."""

from __future__ import annotations

from django.contrib.auth.backends import ModelBackend
from django.db.models import Exists, OuterRef
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User


class AccountsBackend(ModelBackend):
    """ModelBackend whose session user comes with its clinic and ``has_authenticator``.

    The console's MFA gate (accounts/console.py) asks both on every page; loading them with
    the user keeps a console page at the queries it had before MFA.
    """

    def get_user(self, user_id):
        confirmed = TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)
        user = (
            User.objects.select_related("organization")
            .annotate(has_authenticator=Exists(confirmed))
            .filter(pk=user_id)
            .first()
        )
        return user if user is not None and self.user_can_authenticate(user) else None
