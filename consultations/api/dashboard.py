"""The caller's dashboard (assembled by ``selectors.dashboard_for_user``)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from consultations import selectors
from consultations.api._base import ClinicApiView
from consultations.audit import AuditAction, audit_consultations


class DashboardApi(ClinicApiView):
    """Patient: upcoming consultations, unread counts, queue places. Provider: today's schedule
    in their timezone, counts by status, queue length. Staff: the clinic's day."""

    @extend_schema(
        summary="My dashboard",
        responses={200: OpenApiTypes.OBJECT},
        description=(
            "Shape by role. Patient: {role, upcoming: [consultation], queue: [queue entry], "
            "unread_total}. Provider: {role, date, timezone, schedule: [consultation], "
            "counts: {status: n}, queue_length}. Staff: {role, date, timezone, "
            "consultations: [consultation], counts, queue_length, queue_lengths: {provider: n}}."
        ),
    )
    def get(self, request):
        data = selectors.dashboard_for_user(user=request.user)
        audit_consultations(
            request=request,
            action=AuditAction.READ,
            consultations=selectors.dashboard_consultations(data),
        )
        return Response(data)
