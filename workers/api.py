"""Notifications API: the caller's own notifications, and their notification preferences."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from medease.pagination import CursorPagination
from workers import selectors, services
from workers.serializers import (
    NotificationOutput,
    NotificationPreferenceInput,
    NotificationPreferenceOutput,
)


class NotificationPagination(CursorPagination):
    ordering = "-id"


@extend_schema_view(get=extend_schema(summary="List my notifications"))
class NotificationListApi(ListAPIView):
    """The caller's own notifications, newest first."""

    serializer_class = NotificationOutput
    pagination_class = NotificationPagination

    def get_queryset(self):
        return selectors.notifications_for_user(user=self.request.user)


class NotificationPreferenceApi(APIView):
    """Which kinds the caller receives, and their quiet hours (local times, their timezone)."""

    @extend_schema(
        summary="Read my notification preferences",
        responses={200: NotificationPreferenceOutput},
    )
    def get(self, request):
        preference = selectors.notification_preference_for_user(user=request.user)
        return Response(NotificationPreferenceOutput(preference).data)

    @extend_schema(
        summary="Update my notification preferences",
        request=NotificationPreferenceInput,
        responses={200: NotificationPreferenceOutput},
    )
    def put(self, request):
        data = NotificationPreferenceInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        preference = services.notification_preferences_update(
            user=request.user,
            muted_kinds=values.get("muted_kinds"),
            quiet_hours_start=values.get("quiet_hours_start"),
            quiet_hours_end=values.get("quiet_hours_end"),
            set_quiet_hours="quiet_hours_start" in values,
        )
        return Response(NotificationPreferenceOutput(preference).data)

    # Both are partial: fields left out keep their value.
    patch = put
