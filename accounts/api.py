"""Accounts API: register, login, logout, password change, and the caller's profile."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import limits, mfa, selectors, services
from accounts.serializers import (
    LoginInput,
    LoginMfaInput,
    LoginMfaRequiredOutput,
    LoginOutput,
    MeUpdateInput,
    MfaCodeInput,
    MfaStatusOutput,
    PasswordChangeInput,
    RecoveryCodesOutput,
    RegisterInput,
    TotpEnrolOutput,
    UserOutput,
)
from medease import ratelimit
from medease.audit import AuditAction, audit_log
from medease.exceptions import InvalidInput, NotAuthenticated
from medease.schema import error


class RegisterApi(APIView):
    """Patient sign-up."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Sign up as a patient",
        request=RegisterInput,
        responses={201: UserOutput, **error(409, "email_taken"), **error(429), **error(503)},
    )
    def post(self, request):
        ratelimit.hit(request, name="register_ip", key=ratelimit.by_ip)
        data = RegisterInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.patient_register(
            email=data.validated_data["email"],
            password=data.validated_data["password"],
            full_name=data.validated_data["full_name"],
            timezone_name=data.validated_data["timezone"],
        )
        return Response(UserOutput(user).data, status=status.HTTP_201_CREATED)


class LoginApi(APIView):
    """Exchange email and password for a bearer token."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Log in: email and password for a bearer token",
        request=LoginInput,
        responses={
            200: PolymorphicProxySerializer(
                component_name="LoginResult",
                serializers=[LoginOutput, LoginMfaRequiredOutput],
                resource_type_field_name=None,
            ),
            **error(401, description="Wrong email or password: `invalid_credentials`."),
            **error(429),
            **error(503),
        },
    )
    def post(self, request):
        data = LoginInput(data=request.data)
        data.is_valid(raise_exception=True)
        email = data.validated_data["email"]
        # Only failures count, per IP and per account (shared with the console); a
        # locked-out account answers 429 before the password is even checked.
        limits.password_attempt_check(request, email=email)
        try:
            user = services.auth_authenticate(email=email, password=data.validated_data["password"])
        except NotAuthenticated:
            limits.password_attempt_failed(request, email=email)
            raise
        if mfa.mfa_enabled(user=user):
            # Second step: no token until POST auth/login/mfa with a code.
            body = {
                "mfa_required": True,
                "mfa_token": mfa.mfa_challenge_issue(user=user),
                "expires_in": settings.MFA_TOKEN_SECONDS,
            }
            return Response(LoginMfaRequiredOutput(body).data)
        raw, token = services.token_issue(
            user=user, user_agent=request.headers.get("User-Agent", "")
        )
        body = {
            "token": raw,
            "expires_at": token.expires_at,
            "idle_expires_at": selectors.token_idle_expiry(token=token),
            "user": token.user,
        }
        return Response(LoginOutput(body).data)


class LogoutApi(APIView):
    """Revoke the token this request was made with."""

    # Also open to a clinician who still has to enrol in MFA.
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Log out: revoke this token", request=None, responses={204: None})
    def post(self, request):
        services.token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PasswordChangeApi(APIView):
    """Change the caller's password; every token of theirs is revoked (sign in again)."""

    @extend_schema(
        summary="Change the password (every token is revoked)",
        request=PasswordChangeInput,
        responses={204: None, **error(503)},
    )
    def post(self, request):
        data = PasswordChangeInput(data=request.data)
        data.is_valid(raise_exception=True)
        # Guessing the current password here is guessing a login: same counters.
        limits.password_attempt_check(request, email=request.user.email)
        try:
            services.user_change_password(
                user=request.user,
                old_password=data.validated_data["old_password"],
                new_password=data.validated_data["new_password"],
            )
        except InvalidInput as exc:
            if exc.code == services.WRONG_PASSWORD:
                limits.password_attempt_failed(request, email=request.user.email)
            raise
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(APIView):
    """The caller's own profile."""

    @extend_schema(summary="Read my profile", responses={200: UserOutput})
    def get(self, request):
        if request.user.is_patient:
            # A patient's own profile is PHI too; the audit trail covers every reader.
            audit_log(
                request=request,
                action=AuditAction.READ,
                object_type="patient_profile",
                object_ids=[request.user.pk],
                patient_id=request.user.pk,
            )
        return Response(UserOutput(request.user).data)

    @extend_schema(summary="Update my profile", request=MeUpdateInput, responses={200: UserOutput})
    def patch(self, request):
        data = MeUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_update_profile(
            user=request.user,
            full_name=data.validated_data.get("full_name"),
            timezone_name=data.validated_data.get("timezone"),
        )
        if user.is_patient:
            # The answer is the patient's profile, written and read back: audited like get.
            audit_log(
                request=request,
                action=AuditAction.UPDATE,
                object_type="patient_profile",
                object_ids=[user.pk],
                patient_id=user.pk,
            )
        return Response(UserOutput(user).data)


def _no_store(response: Response) -> Response:
    # Secrets and recovery codes: never kept by a browser or proxy cache.
    response["Cache-Control"] = "no-store"
    return response


class LoginMfaApi(APIView):
    """Second step of a login with MFA: the mfa_token and a code for a bearer token."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Log in, second step: a code from the authenticator or a recovery code",
        tags=["auth"],
        request=LoginMfaInput,
        responses={
            200: LoginOutput,
            **error(
                401,
                description="`mfa_token_invalid` (expired or used: log in again), `invalid_code`.",
            ),
            **error(429),
            **error(503),
        },
    )
    def post(self, request):
        data = LoginMfaInput(data=request.data)
        data.is_valid(raise_exception=True)
        raw, token = mfa.mfa_login(
            request,
            mfa_token=data.validated_data["mfa_token"],
            code=data.validated_data["code"],
            user_agent=request.headers.get("User-Agent", ""),
        )
        body = {
            "token": raw,
            "expires_at": token.expires_at,
            "idle_expires_at": selectors.token_idle_expiry(token=token),
            "user": token.user,
        }
        return Response(LoginOutput(body).data)


class MfaStatusApi(APIView):
    """Whether the caller has MFA, whether their clinic requires it, codes left."""

    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Read my MFA status", tags=["auth"], responses={200: MfaStatusOutput})
    def get(self, request):
        user = request.user
        body = {
            "enabled": mfa.mfa_enabled(user=user),
            "required": mfa.mfa_required_by_organization(user=user),
            "recovery_codes_left": mfa.recovery_codes_left(user=user),
        }
        return Response(MfaStatusOutput(body).data)


class TotpApi(APIView):
    """Add (start) or remove the caller's authenticator app."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Start adding an authenticator app (confirm it with a code next)",
        tags=["auth"],
        request=None,
        responses={
            201: TotpEnrolOutput,
            **error(403, "mfa_not_available"),
            **error(409, "mfa_already_enabled"),
        },
    )
    def post(self, request):
        device = mfa.totp_enrol_start(user=request.user)
        body = {"otpauth_uri": device.config_url, "secret": mfa.totp_secret(device)}
        return _no_store(Response(TotpEnrolOutput(body).data, status=status.HTTP_201_CREATED))

    @extend_schema(
        summary="Remove the authenticator app and recovery codes (needs a current code)",
        tags=["auth"],
        request=MfaCodeInput,
        responses={
            204: None,
            **error(403, "mfa_not_available"),
            **error(409, "mfa_not_enabled"),
            **error(503),
        },
    )
    def delete(self, request):
        data = MfaCodeInput(data=request.data)
        data.is_valid(raise_exception=True)
        mfa.totp_disable(request, user=request.user, code=data.validated_data["code"])
        return Response(status=status.HTTP_204_NO_CONTENT)


class TotpConfirmApi(APIView):
    """Confirm the authenticator being added; answers the recovery codes, once."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Confirm the authenticator app with a code; get recovery codes (shown once)",
        tags=["auth"],
        request=MfaCodeInput,
        responses={
            200: RecoveryCodesOutput,
            **error(403, "mfa_not_available"),
            **error(409, "mfa_enrolment_not_started", "mfa_already_enabled"),
            **error(503),
        },
    )
    def post(self, request):
        data = MfaCodeInput(data=request.data)
        data.is_valid(raise_exception=True)
        _device, codes = mfa.totp_enrol_confirm(
            request, user=request.user, code=data.validated_data["code"]
        )
        return _no_store(Response(RecoveryCodesOutput({"recovery_codes": codes}).data))


class RecoveryCodesApi(APIView):
    """Replace the caller's recovery codes (the old ones stop working)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Regenerate recovery codes (needs a current code; shown once)",
        tags=["auth"],
        request=MfaCodeInput,
        responses={
            200: RecoveryCodesOutput,
            **error(403, "mfa_not_available"),
            **error(409, "mfa_not_enabled"),
            **error(503),
        },
    )
    def post(self, request):
        data = MfaCodeInput(data=request.data)
        data.is_valid(raise_exception=True)
        codes = mfa.recovery_codes_regenerate(
            request, user=request.user, code=data.validated_data["code"]
        )
        return _no_store(Response(RecoveryCodesOutput({"recovery_codes": codes}).data))
