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
