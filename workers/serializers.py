"""Input and output shapes of the notifications API."""

from __future__ import annotations

from rest_framework import serializers

from workers.models import Notification, NotificationKind, NotificationPreference


class NotificationOutput(serializers.ModelSerializer):
    """The contract's notification shape: ``{id, kind, channel, status, created_at, sent_at}``."""

    class Meta:
        model = Notification
        fields = ["id", "kind", "channel", "status", "created_at", "sent_at"]
        read_only_fields = fields


class NotificationPreferenceOutput(serializers.ModelSerializer):
    class Meta:
        model = NotificationPreference
        fields = ["muted_kinds", "quiet_hours_start", "quiet_hours_end"]
        read_only_fields = fields


class NotificationPreferenceInput(serializers.Serializer):
    muted_kinds = serializers.ListField(
        child=serializers.ChoiceField(choices=NotificationKind.choices),
        required=False,
        max_length=len(NotificationKind.choices),
    )
    quiet_hours_start = serializers.TimeField(required=False, allow_null=True)
    quiet_hours_end = serializers.TimeField(required=False, allow_null=True)

    def validate(self, attrs):
        has_start, has_end = "quiet_hours_start" in attrs, "quiet_hours_end" in attrs
        if has_start != has_end:
            raise serializers.ValidationError(
                {"quiet_hours_end" if has_start else "quiet_hours_start": "Give both or neither."}
            )
        return attrs
