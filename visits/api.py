"""Video visit API: join, leave and read the call of a consultation (docs/api.md, "Video
visits"). Thin: find through scoped selectors, call one service, audit, answer."""

from __future__ import annotations

from django.utils.cache import add_never_cache_headers
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from consultations.selectors import consultation_get_for_user
from medease.audit import AuditAction, audit_log
from medease.schema import error
from visits import selectors, services
from visits.serializers import CallJoinedOutput, CallStateOutput, call_payload
from visits.turn import ice_servers_for


def _audit(request, *, action: str, call) -> None:
    consultation = call.consultation
    audit_log(
        request=request,
        action=action,
        object_type="call",
        object_ids=[call.pk],
        patient_id=consultation.patient_id,
        organization_id=consultation.organization_id,
    )


class ConsultationCallApi(APIView):
    @extend_schema(
        summary="Join a consultation's video call",
        request=None,
        responses={
            200: CallJoinedOutput,
            **error(403, "not_participant"),
            **error(409, "consultation_closed"),
        },
    )
    def post(self, request, consultation_id: int):
        consultation = consultation_get_for_user(user=request.user, consultation_id=consultation_id)
        call = services.call_join(consultation=consultation, user=request.user)
        call.consultation = consultation
        _audit(request, action=AuditAction.CREATE, call=call)
        body = {"call": call_payload(call), "ice_servers": ice_servers_for(user_id=request.user.pk)}
        response = Response(body)
        add_never_cache_headers(response)  # TURN credentials must not be cached
        return response

    @extend_schema(
        summary="Leave a consultation's video call",
        request=None,
        responses={204: None, **error(403, "not_participant")},
    )
    def delete(self, request, consultation_id: int):
        consultation = consultation_get_for_user(user=request.user, consultation_id=consultation_id)
        services.call_leave(consultation=consultation, user=request.user)
        return Response(status=204)

    @extend_schema(
        summary="Read a consultation's video call",
        responses={200: CallStateOutput},
    )
    def get(self, request, consultation_id: int):
        call = selectors.call_get_for_user(user=request.user, consultation_id=consultation_id)
        _audit(request, action=AuditAction.READ, call=call)
        return Response({"call": call_payload(call)})
