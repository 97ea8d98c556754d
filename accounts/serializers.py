"""Input and output shapes of the accounts API."""

from __future__ import annotations

from rest_framework import serializers

from accounts.models import User


class UserOutput(serializers.ModelSerializer):
    """The contract's user shape: ``{id, email, full_name, role, organization, timezone}``."""

    class Meta:
        model = User
        fields = ["id", "email", "full_name", "role", "organization", "timezone"]
        read_only_fields = fields


class RegisterInput(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=128, trim_whitespace=False)
    full_name = serializers.CharField(max_length=200)
    timezone = serializers.CharField(max_length=64, required=False, default="UTC")


class LoginInput(serializers.Serializer):
    email = serializers.CharField(max_length=254)
    password = serializers.CharField(max_length=128, trim_whitespace=False)


class LoginOutput(serializers.Serializer):
    token = serializers.CharField()
    expires_at = serializers.DateTimeField()
    idle_expires_at = serializers.DateTimeField()
    user = UserOutput()


class MeUpdateInput(serializers.Serializer):
    full_name = serializers.CharField(max_length=200, required=False)
    timezone = serializers.CharField(max_length=64, required=False)


class PasswordChangeInput(serializers.Serializer):
    old_password = serializers.CharField(max_length=128, trim_whitespace=False)
    new_password = serializers.CharField(max_length=128, trim_whitespace=False)


class LoginMfaRequiredOutput(serializers.Serializer):
    """The password was right and the account has MFA: send the code to ``auth/login/mfa``."""

    mfa_required = serializers.BooleanField(help_text="Always true in this shape.")
    mfa_token = serializers.CharField(help_text="Single use; pass it to POST auth/login/mfa.")
    expires_in = serializers.IntegerField(help_text="Seconds the mfa_token stays valid.")


class LoginMfaInput(serializers.Serializer):
    mfa_token = serializers.CharField(max_length=1000, trim_whitespace=True)
    code = serializers.CharField(
        max_length=64, help_text="6 digits from the authenticator app, or a recovery code."
    )


class MfaCodeInput(serializers.Serializer):
    code = serializers.CharField(
        max_length=64, help_text="6 digits from the authenticator app, or a recovery code."
    )


class MfaStatusOutput(serializers.Serializer):
    enabled = serializers.BooleanField(help_text="A confirmed authenticator is set up.")
    required = serializers.BooleanField(help_text="The user's clinic requires MFA.")
    recovery_codes_left = serializers.IntegerField()


class TotpEnrolOutput(serializers.Serializer):
    otpauth_uri = serializers.CharField(help_text="otpauth://totp/... for a QR code.")
    secret = serializers.CharField(help_text="The same key in base32, to type in.")


class RecoveryCodesOutput(serializers.Serializer):
    recovery_codes = serializers.ListField(
        child=serializers.CharField(), help_text="Shown once; each works once in place of a code."
    )
