"""The caller's dashboard (assembled by ``selectors.dashboard_for_user``)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from consultations import selectors
from consultations.api._base import ClinicApiView
from consultations.audit import AuditAction, audit_typed_rows


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
        rows = [
            ("consultation", c["id"], c["patient"], c["organization"])
            for c in selectors.dashboard_consultations(data)
        ]
        # A patient's queue places show the reason they gave (PHI too). The body does not
        # name the queue's clinic, and looking it up would cost a query: the event has none.
        rows += [("queue_entry", q["id"], q["patient"], None) for q in data.get("queue", [])]
        audit_typed_rows(request=request, action=AuditAction.READ, rows=rows)
        return Response(data)
