"""Accounts API: register, login, logout, password change, and the caller's profile."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import limits, selectors, services
from accounts.serializers import (
    LoginInput,
    LoginOutput,
    MeUpdateInput,
    PasswordChangeInput,
    RegisterInput,
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
            200: LoginOutput,
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
            raw, token = services.auth_login(
                email=email,
                password=data.validated_data["password"],
                user_agent=request.headers.get("User-Agent", ""),
            )
        except NotAuthenticated:
            limits.password_attempt_failed(request, email=email)
            raise
        body = {
            "token": raw,
            "expires_at": token.expires_at,
            "idle_expires_at": selectors.token_idle_expiry(token=token),
            "user": token.user,
        }
        return Response(LoginOutput(body).data)


class LogoutApi(APIView):
    """Revoke the token this request was made with."""

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
        return Response(UserOutput(user).data)
