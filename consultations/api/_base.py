"""What the clinic-core views share: the caller's timezone, pagination, input parsing and
the consultation body (with the caller's unread count)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from django.utils import timezone
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from consultations import selectors
from consultations.serializers import consultation_rows, consultation_values
from medease.pagination import CursorPagination


def paginator_for(ordering: tuple[str, ...]) -> CursorPagination:
    paginator = CursorPagination()
    paginator.ordering = ordering
    return paginator


def is_clinician(user) -> bool:
    return user.role in (Role.PROVIDER, Role.STAFF)


class ClinicApiView(APIView):
    """Base view: renders datetimes in the authenticated caller's timezone."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        tz_name = getattr(request.user, "timezone", None)
        if tz_name:
            timezone.activate(ZoneInfo(tz_name))

    def finalize_response(self, request, response, *args, **kwargs):
        timezone.deactivate()
        return super().finalize_response(request, response, *args, **kwargs)

    def consultation_body(
        self, consultation, *, status_code: int = 200, created: bool = False
    ) -> Response:
        user = self.request.user
        if created:
            # Committed just now: its chat was empty at the commit this body describes.
            unread = {}
        else:
            unread = selectors.unread_counts_for(user=user, consultation_ids=[consultation.pk])
        body = consultation_rows(
            [consultation_values(consultation)], unread_counts=unread, clinician=is_clinician(user)
        )[0]
        return Response(body, status=status_code)


def valid(serializer_cls, data):
    serializer = serializer_cls(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
