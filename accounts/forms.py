"""Forms of the staff console that check passwords and second-factor codes."""

from __future__ import annotations

import math

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.admin.forms import (
    AdminPasswordChangeForm as AdminOwnPasswordChangeForm,
)
from django.contrib.auth.forms import AdminPasswordChangeForm
from django.core.exceptions import ValidationError

from accounts import limits, services
from medease.exceptions import ApplicationError, RateLimited, ServiceUnavailable


def _attempt_check(request, *, email: str) -> None:
    """limits.password_attempt_check, answered as a form error instead of an API error."""
    try:
        # Before the password: while locked, the right password is refused too.
        limits.password_attempt_check(request, email=email)
    except RateLimited as exc:
        raise ValidationError(
            "Too many failed sign-in attempts for this account or from this address. "
            "Try again in %(minutes)d minute(s).",
            code="rate_limited",
            params={"minutes": math.ceil(exc.retry_after / 60)},
        ) from exc
    except ServiceUnavailable as exc:
        raise ValidationError(
            "Signing in is temporarily unavailable. Try again shortly.", code="unavailable"
        ) from exc


# Shown only after the right password (so it tells nothing about which e-mails exist).
CONSOLE_IS_FOR_STAFF = (
    "The console is for clinic staff. Patients and providers sign in to their visits in the app."
)


class ConsoleLoginForm(AdminAuthenticationForm):
    """The console's login, under the API login's failed-password limits (same counters)."""

    def confirm_login_allowed(self, user):
        # Reached only with the right password: a patient or provider is told where to go
        # instead of being sent to guess their password again.
        if user.is_active and not user.is_staff:
            raise ValidationError(CONSOLE_IS_FOR_STAFF, code="not_staff")
        super().confirm_login_allowed(user)

    def clean(self):
        email = self.cleaned_data.get("username")
        if email is None or not self.cleaned_data.get("password"):
            return super().clean()
        _attempt_check(self.request, email=email)
        try:
            return super().clean()
        except ValidationError:
            # Only a wrong password counts; a right one of a non-staff account does not.
            if self.user_cache is None:
                limits.password_attempt_failed(self.request, email=email)
            raise


class ConsolePasswordChangeForm(AdminPasswordChangeForm):
    """Staff set someone's password: through the service, so their sessions end everywhere."""

    def save(self, commit=True):
        usable = self.cleaned_data.get("set_usable_password", True)
        services.user_set_password(
            user=self.user, password=self.cleaned_data["password1"] if usable else None
        )
        return self.user


class ConsoleOwnPasswordChangeForm(AdminOwnPasswordChangeForm):
    """A console user changes their own password: the current one is guessed under the login
    limits, and the change goes through the service (their tokens and sockets end)."""

    def __init__(self, user, *args, request=None, **kwargs) -> None:
        super().__init__(user, *args, **kwargs)
        self.request = request

    def clean_old_password(self):
        _attempt_check(self.request, email=self.user.email)
        try:
            return super().clean_old_password()
        except ValidationError:
            limits.password_attempt_failed(self.request, email=self.user.email)
            raise

    def save(self, commit=True):
        services.user_set_password(user=self.user, password=self.cleaned_data["new_password1"])
        return self.user


class _OneTimeCodeInput(forms.TextInput):
    """A code field that comes back empty: a used or wrong code is never worth showing again."""

    def format_value(self, value):
        return None


class ConsoleMfaCodeForm(forms.Form):
    """A code from the authenticator app (or a recovery code), checked by a given service call.

    ``check(code)`` is an accounts.mfa service; its errors (wrong code, too many tries, an
    expired sign-in) become form errors, and its result is kept in ``self.result``.
    """

    code = forms.CharField(
        label="Code",
        max_length=64,
        help_text="The 6 digits your authenticator app shows, or one of your recovery codes.",
        widget=_OneTimeCodeInput(
            attrs={"autocomplete": "one-time-code", "autofocus": True, "spellcheck": "false"}
        ),
    )

    def __init__(self, *args, check, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.check = check
        self.result = None

    def clean(self):
        code = self.cleaned_data.get("code")
        if not code:
            return self.cleaned_data
        try:
            self.result = self.check(code)
        except RateLimited as exc:
            raise ValidationError(
                "Too many wrong codes. Try again in %(seconds)d second(s).",
                code="rate_limited",
                params={"seconds": math.ceil(exc.retry_after)},
            ) from exc
        except ServiceUnavailable as exc:
            raise ValidationError(
                "Signing in is temporarily unavailable. Try again shortly.", code="unavailable"
            ) from exc
        except ApplicationError as exc:
            # A wrong or used code, an expired sign-in, nothing being set up.
            raise ValidationError(exc.message, code=exc.code) from exc
        return self.cleaned_data
