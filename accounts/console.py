"""The staff console's second factor: the login's code step, enrolment, and the MFA gate.

The password step does not log anyone in when the account has an authenticator: it keeps
an mfa_token (accounts.mfa) in the session and sends the browser to the code page, which
logs in and marks the session OTP-verified (django-otp). Every console page then needs a
verified session from a user with an authenticator, and sends a clinician whose clinic
requires MFA but who has none yet to the setup page. The pages here are thin: each check
and write is an accounts.mfa service.
"""

from __future__ import annotations

import functools
import io

import qrcode
import qrcode.image.svg
from django.contrib import messages
from django.contrib.auth import REDIRECT_FIELD_NAME, logout
from django.contrib.auth import login as auth_login
from django.contrib.auth.views import LoginView, redirect_to_login
from django.http import HttpResponseRedirect
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.safestring import mark_safe
from django_otp import login as otp_login

from accounts import mfa
from accounts.forms import ConsoleMfaCodeForm

PENDING_SESSION_KEY = "accounts_mfa_pending"
# Set with django-otp's own key: this session passed a second factor.
VERIFIED_SESSION_KEY = "accounts_mfa_verified"


def _otp_verified(request, device) -> None:
    otp_login(request, device)
    request.session[VERIFIED_SESSION_KEY] = True


class ConsoleLoginView(LoginView):
    """The password step; with an authenticator, it hands over to the code step instead."""

    def form_valid(self, form):
        user = form.get_user()
        if not mfa.mfa_enabled(user=user):
            return super().form_valid(form)
        self.request.session[PENDING_SESSION_KEY] = mfa.mfa_challenge_issue(user=user)
        query = urlencode({REDIRECT_FIELD_NAME: self.get_success_url()})
        return HttpResponseRedirect(f"{reverse('admin:accounts_mfa_verify')}?{query}")


def console_login(site, request, extra_context=None):
    """AdminSite.login with ConsoleLoginView (same context, form and template)."""
    if request.method == "GET" and site.has_permission(request):
        return redirect("admin:index")
    context = {
        **site.each_context(request),
        "title": "Log in",
        "subtitle": None,
        "app_path": request.get_full_path(),
        "username": request.user.get_username(),
    }
    if REDIRECT_FIELD_NAME not in request.GET and REDIRECT_FIELD_NAME not in request.POST:
        context[REDIRECT_FIELD_NAME] = reverse("admin:index", current_app=site.name)
    context.update(extra_context or {})
    request.current_app = site.name
    return ConsoleLoginView.as_view(
        extra_context=context,
        authentication_form=site.login_form,
        template_name=site.login_template or "admin/login.html",
    )(request)


def _safe_next(request) -> str:
    target = request.POST.get(REDIRECT_FIELD_NAME) or request.GET.get(REDIRECT_FIELD_NAME, "")
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("admin:index")


def mfa_verify(site, request):
    """The login's code step (not behind the login: the user is not logged in yet)."""
    mfa_token = request.session.get(PENDING_SESSION_KEY)
    if not mfa_token:
        return redirect("admin:login")

    def check(code):
        return mfa.mfa_challenge_complete(request, mfa_token=mfa_token, code=code)

    form = ConsoleMfaCodeForm(request.POST or None, check=check)
    if request.method == "POST" and form.is_valid():
        user, device = form.result
        request.session.pop(PENDING_SESSION_KEY, None)
        auth_login(request, user)
        _otp_verified(request, device)
        return HttpResponseRedirect(_safe_next(request))
    context = {
        **site.each_context(request),
        "title": "Two-factor sign-in",
        "form": form,
        "next": _safe_next(request),
    }
    return TemplateResponse(request, "accounts/mfa_verify.html", context)


def _qr_svg(uri: str) -> str:
    out = io.BytesIO()
    qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8).save(out)
    # The SVG comes from qrcode (paths for the otpauth URI only), never from user input.
    return mark_safe(out.getvalue().decode())  # noqa: S308


def _recovery_codes_page(site, request, codes: list[str]):
    context = {**site.each_context(request), "title": "Your recovery codes", "codes": codes}
    response = TemplateResponse(request, "accounts/mfa_recovery_codes.html", context)
    response["Cache-Control"] = "no-store"
    return response


def mfa_setup(site, request):
    """Add an authenticator: QR code and secret, confirm with a code, then recovery codes."""
    user = request.user
    if not mfa.mfa_can_enrol(user=user):
        messages.error(request, "Two-factor sign-in is for clinicians and administrators.")
        return redirect("admin:index")
    if mfa.mfa_enabled(user=user):
        return redirect("admin:accounts_mfa")

    def check(code):
        return mfa.totp_enrol_confirm(request, user=user, code=code)

    form = ConsoleMfaCodeForm(request.POST or None, check=check)
    if request.method == "POST" and form.is_valid():
        device, codes = form.result
        # This session has just proven the new authenticator.
        _otp_verified(request, device)
        return _recovery_codes_page(site, request, codes)
    device = mfa.totp_enrol_ensure(user=user)
    context = {
        **site.each_context(request),
        "title": "Set up two-factor sign-in",
        "form": form,
        "qr_svg": _qr_svg(device.config_url),
        "secret": mfa.totp_secret(device),
        "required": mfa.mfa_required_by_organization(user=user),
    }
    response = TemplateResponse(request, "accounts/mfa_setup.html", context)
    response["Cache-Control"] = "no-store"
    return response


def mfa_overview(site, request):
    """The clinician's own MFA: status, and new recovery codes for a current code."""
    user = request.user

    def check(code):
        return mfa.recovery_codes_regenerate(request, user=user, code=code)

    form = ConsoleMfaCodeForm(request.POST or None, check=check)
    if request.method == "POST" and form.is_valid():
        return _recovery_codes_page(site, request, form.result)
    context = {
        **site.each_context(request),
        "title": "Two-factor sign-in",
        "form": form,
        "enabled": mfa.mfa_enabled(user=user),
        "can_enrol": mfa.mfa_can_enrol(user=user),
        "required": mfa.mfa_required_by_organization(user=user),
        "codes_left": mfa.recovery_codes_left(user=user),
    }
    return TemplateResponse(request, "accounts/mfa_overview.html", context)


def _second_factor_missing(request) -> str | None:
    """``verify`` (has an authenticator, session not verified), ``enrol`` or None."""
    user = request.user
    if not (user.is_active and user.is_staff):
        return None  # the console's own login check answers
    if getattr(user, "is_verified", None) is not None and user.is_verified():
        return None
    if request.session.get(VERIFIED_SESSION_KEY):
        # Verified by a device that is gone since (reset by staff, or removed; django-otp
        # has dropped its own session key by now): this session ends.
        return "verify"
    # Loaded with the session's user (accounts.backends), else asked.
    has_authenticator = getattr(user, "has_authenticator", None)
    if has_authenticator is None:
        has_authenticator = mfa.mfa_enabled(user=user)
    if has_authenticator:
        return "verify"
    if mfa.mfa_required_by_organization(user=user):
        return "enrol"
    return None


# Console views that stay open to a session without its second factor.
_UNGATED = frozenset({"logout"})


def gated_admin_view(base_admin_view):
    """AdminSite.admin_view plus the MFA gate (``base_admin_view`` is the site's own)."""

    def admin_view(view, cacheable=False):
        inner = base_admin_view(view, cacheable)
        if getattr(view, "__name__", "") in _UNGATED:
            return inner

        @functools.wraps(inner)
        def gate(request, *args, **kwargs):
            missing = _second_factor_missing(request)
            if missing == "verify":
                # Logged in by password only while an authenticator exists (added since,
                # elsewhere): sign in again, with the code.
                logout(request)
                return redirect_to_login(request.get_full_path(), reverse("admin:login"))
            if missing == "enrol":
                messages.warning(
                    request,
                    "Your clinic requires two-factor sign-in: set up an authenticator app "
                    "to continue.",
                )
                return redirect("admin:accounts_mfa_setup")
            return inner(request, *args, **kwargs)

        return gate

    return admin_view
