"""Shapes of the call API and of ``call.state`` events (the same call payload in both)."""

from __future__ import annotations

from rest_framework import serializers

from visits.models import Call, CallParticipant


class CallParticipantOutput(serializers.ModelSerializer):
    """One stay in the call: ``{user, joined_at, left_at}`` (a rejoin is another entry)."""

    user = serializers.IntegerField(source="user_id")

    class Meta:
        model = CallParticipant
        fields = ["user", "joined_at", "left_at"]


class CallOutput(serializers.ModelSerializer):
    """``{id, consultation, status, participants, started_at, ended_at}``."""

    consultation = serializers.IntegerField(source="consultation_id")
    participants = CallParticipantOutput(many=True)

    class Meta:
        model = Call
        fields = ["id", "consultation", "status", "participants", "started_at", "ended_at"]


class IceServerOutput(serializers.Serializer):
    urls = serializers.ListField(child=serializers.CharField())
    username = serializers.CharField()
    credential = serializers.CharField()


class CallJoinedOutput(serializers.Serializer):
    """The answer to joining: the call, and the ICE servers to reach the other side with."""

    call = CallOutput()
    ice_servers = IceServerOutput(many=True)


class CallStateOutput(serializers.Serializer):
    call = CallOutput()


def call_payload(call: Call) -> dict:
    """The call as plain JSON types (participants prefetched by the caller or loaded here)."""
    return dict(CallOutput(call).data)
