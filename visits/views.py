"""The visit page (``/visit/{id}/``) for patients and providers, its sign-in and join links.

Thin: the grant lives in visits/session.py, links in visits/links.py, the rules of sign-in
(failed-password limits, the second factor) in accounts. The page itself is static HTML
plus visits/static/visits/visit.js, which talks to the API and the websocket.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import limits, mfa
from accounts import services as account_services
from accounts.models import User
from consultations.selectors import consultation_get_for_user
from medease.audit import AuditAction, audit_log
from medease.exceptions import ApplicationError, NotFound, RateLimited, ServiceUnavailable
from visits import links, session

_MFA_TOKEN_KEY = "visit_mfa_token"  # noqa: S105 - a session key, not a secret
_NEXT_KEY = "visit_next"
STAFF_GO_TO_CONSOLE = "Clinic staff observe visits from the staff console, not here."
ENROL_FIRST = (
    "Your clinic requires two-factor sign-in: set up an authenticator in the app first, "
    "then sign in here."
)


class SignInForm(forms.Form):
    email = forms.EmailField(max_length=254)
    password = forms.CharField(max_length=4096, strip=False, widget=forms.PasswordInput)


class CodeForm(forms.Form):
    code = forms.CharField(max_length=64, label="Code from your authenticator (or a recovery code)")


def _next_url(request, candidate: str | None) -> str:
    """Only a visit page of this site; anything else goes nowhere."""
    if (
        candidate
        and candidate.startswith("/visit/")
        and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()})
    ):
        return candidate
    return reverse("visit-sign-in-done")


def _participant_consultation(user: User, consultation_id: int):
    """The consultation if the user is its patient or provider; Http404 otherwise."""
    try:
        consultation = consultation_get_for_user(user=user, consultation_id=consultation_id)
    except NotFound:
        raise Http404 from None
    if user.pk not in (consultation.patient_id, consultation.provider_id):
        raise Http404  # clinic staff observe from the console
    return consultation


def _signed_in(request, user: User):
    session.grant_all(request, user=user)
    return HttpResponseRedirect(_next_url(request, request.session.pop(_NEXT_KEY, None)))


@never_cache
@require_http_methods(["GET", "POST"])
def sign_in(request):
    """E-mail and password (the API login's limits), then the code step for MFA users."""
    if request.method == "GET":
        request.session[_NEXT_KEY] = _next_url(request, request.GET.get("next"))
        return render(request, "visits/sign_in.html", {"form": SignInForm()})
    form = SignInForm(request.POST)
    if not form.is_valid():
        return render(request, "visits/sign_in.html", {"form": form}, status=400)
    email, password = form.cleaned_data["email"], form.cleaned_data["password"]
    try:
        limits.password_attempt_check(request, email=email)
        user = account_services.auth_authenticate(email=email, password=password)
    except RateLimited as exc:
        form.add_error(None, f"Too many failed attempts. Try again in {exc.retry_after} s.")
        return render(request, "visits/sign_in.html", {"form": form}, status=429)
    except ServiceUnavailable:
        form.add_error(None, "Signing in is temporarily unavailable. Try again shortly.")
        return render(request, "visits/sign_in.html", {"form": form}, status=503)
    except ApplicationError:
        limits.password_attempt_failed(request, email=email)
        form.add_error(None, "Email or password is incorrect.")
        return render(request, "visits/sign_in.html", {"form": form}, status=400)
    # Reached only with the right password, so these tell nothing about which accounts exist.
    if user.is_staff:
        form.add_error(None, STAFF_GO_TO_CONSOLE)
        return render(request, "visits/sign_in.html", {"form": form}, status=403)
    if mfa.mfa_enrolment_pending(user=user):
        form.add_error(None, ENROL_FIRST)
        return render(request, "visits/sign_in.html", {"form": form}, status=403)
    if mfa.mfa_enabled(user=user):
        try:
            request.session[_MFA_TOKEN_KEY] = mfa.mfa_challenge_issue(user=user)
        except ServiceUnavailable:
            form.add_error(None, "Signing in is temporarily unavailable. Try again shortly.")
            return render(request, "visits/sign_in.html", {"form": form}, status=503)
        return HttpResponseRedirect(reverse("visit-sign-in-code"))
    return _signed_in(request, user)


@never_cache
@require_http_methods(["GET", "POST"])
def sign_in_code(request):
    """The second step: a code for the challenge the password step left in the session."""
    mfa_token = request.session.get(_MFA_TOKEN_KEY)
    if not mfa_token:
        return HttpResponseRedirect(reverse("visit-sign-in"))
    form = CodeForm(request.POST if request.method == "POST" else None)
    if request.method == "GET" or not form.is_valid():
        return render(request, "visits/sign_in_code.html", {"form": form})
    try:
        user, _device = mfa.mfa_challenge_complete(
            request, mfa_token=mfa_token, code=form.cleaned_data["code"]
        )
    except RateLimited as exc:
        form.add_error(None, f"Too many wrong codes. Try again in {exc.retry_after} s.")
        return render(request, "visits/sign_in_code.html", {"form": form}, status=429)
    except ApplicationError as exc:
        if exc.code == mfa.MFA_TOKEN_INVALID:
            request.session.pop(_MFA_TOKEN_KEY, None)
        form.add_error(None, exc.message)
        return render(request, "visits/sign_in_code.html", {"form": form}, status=400)
    request.session.pop(_MFA_TOKEN_KEY, None)
    return _signed_in(request, user)


@never_cache
@require_GET
def signed_in(request):
    """Where a sign-in without a visit to go to lands."""
    user = session.grant_user(request)
    if user is None:
        return HttpResponseRedirect(reverse("visit-sign-in"))
    return render(request, "visits/signed_in.html", {"me": user})


@require_POST
def sign_out(request):
    session.grant_end(request)
    return HttpResponseRedirect(reverse("visit-sign-in"))


@never_cache
@require_GET
def join(request, token: str):
    """A reminder's join link: opens that one visit for that one user (audited)."""
    link = links.join_token_read(token)
    user = None
    if link is not None:
        user = User.objects.select_related("organization").filter(pk=link.user_id).first()
    if (
        user is None
        or not user.is_active
        or user.credentials_changed_at.timestamp() != link.credentials_stamp
    ):
        return render(request, "visits/link_refused.html", status=403)
    consultation = _participant_consultation(user, link.consultation_id)
    page = reverse("visit-page", kwargs={"consultation_id": consultation.pk})
    if mfa.mfa_enabled(user=user) or mfa.mfa_enrolment_pending(user=user):
        # A link is one factor at most: clinicians with MFA sign in the normal way.
        return HttpResponseRedirect(f"{reverse('visit-sign-in')}?next={page}")
    session.grant_one(request, user=user, consultation_id=consultation.pk)
    request.user = user  # the audit event names who opened it
    audit_log(
        request=request,
        action=AuditAction.CREATE,
        object_type="visit_link",
        object_ids=[consultation.pk],
        patient_id=consultation.patient_id,
        organization_id=consultation.organization_id,
    )
    return HttpResponseRedirect(page)


@never_cache
@require_GET
def visit_page(request, consultation_id: int):
    """The waiting room, chat and video of one visit, for its patient and provider."""
    if request.user.is_authenticated and request.user.is_staff:
        raise Http404  # staff observe from the console
    user = session.grant_user(request)
    if user is None:
        return HttpResponseRedirect(f"{reverse('visit-sign-in')}?next={request.path}")
    if not session.grant_covers(request, consultation_id):
        raise Http404
    consultation = _participant_consultation(user, consultation_id)
    request.user = user  # the audit event names who opened it
    audit_log(
        request=request,
        action=AuditAction.READ,
        object_type="consultation",
        object_ids=[consultation.pk],
        patient_id=consultation.patient_id,
        organization_id=consultation.organization_id,
    )
    patient, provider = consultation.patient, consultation.provider
    config = {
        "consultation": consultation.pk,
        "me": user.pk,
        "role": "provider" if user.pk == provider.pk else "patient",
        "names": {str(patient.pk): patient.full_name, str(provider.pk): provider.full_name},
        "patient": patient.pk,
        "provider": provider.pk,
        # Tests force relayed media (TURN) with ?relay=1; it only ever narrows the choice.
        "relay_only": settings.VISIT_ICE_RELAY_ONLY or request.GET.get("relay") == "1",
    }
    other = provider if user.pk == patient.pk else patient
    context = {"consultation": consultation, "me": user, "other": other, "config": config}
    return render(request, "visits/visit.html", context)
