"""The walk-in queue: join and list (per provider), call next, one entry (position, leave)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response

from consultations import selectors, services
from consultations.api._base import ClinicApiView, paginator_for, valid
from consultations.audit import AuditAction, audit_log, audit_queue_entries
from consultations.permissions import require_patient
from consultations.serializers import ConsultationOutput, QueueEntryOutput, QueueJoinInput
from medease.schema import error


class ProviderQueueApi(ClinicApiView):
    """POST: a patient joins the provider's walk-in queue (201). GET: the waiting list, head
    first (that provider and their clinic's staff)."""

    @extend_schema(
        summary="Join a provider's walk-in queue (patients)",
        request=QueueJoinInput,
        responses={
            201: QueueEntryOutput,
            **error(403, "forbidden"),
            **error(409, "already_in_queue"),
        },
    )
    def post(self, request, provider_id: int):
        require_patient(request.user, action="join the walk-in queue")
        provider = selectors.provider_get(provider_id=provider_id)
        data = valid(QueueJoinInput, request.data)
        entry = services.queue_join(patient=request.user, provider=provider, reason=data["reason"])
        entry = selectors.queue_entry_get_for_user(user=request.user, entry_id=entry.pk)
        # The reason the patient gives is PHI: its creation is audited.
        audit_queue_entries(request=request, action=AuditAction.CREATE, entries=[entry])
        estimate = selectors.queue_wait_estimator(provider=provider)
        return Response(
            QueueEntryOutput(entry, context={"estimate": estimate}).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(
        summary="List a provider's waiting queue", responses={200: QueueEntryOutput(many=True)}
    )
    def get(self, request, provider_id: int):
        provider = selectors.provider_get_managed(user=request.user, provider_id=provider_id)
        paginator = paginator_for(("joined_at", "id"))
        page = paginator.paginate_queryset(
            selectors.queue_waiting(provider_id=provider.pk), request, view=self
        )
        estimate = selectors.queue_wait_estimator(provider=provider)
        data = QueueEntryOutput(page, many=True, context={"estimate": estimate}).data
        # Patients and their reasons: one event per entry shown, in one INSERT.
        audit_queue_entries(request=request, action=AuditAction.READ, entries=page)
        return paginator.get_paginated_response(data)


class ProviderQueueNextApi(ClinicApiView):
    """POST: start a consultation with the head of the queue → 201; 409 when nobody waits."""

    @extend_schema(
        summary="Call the next patient in the queue",
        request=None,
        responses={
            201: ConsultationOutput,
            **error(409, "queue_empty", "queue_changed", "provider_busy"),
        },
    )
    def post(self, request, provider_id: int):
        provider = selectors.provider_get_managed(user=request.user, provider_id=provider_id)
        consultation = services.queue_call_next(provider=provider, actor=request.user)
        audit_log(
            request=request,
            action=AuditAction.CREATE,
            object_type="consultation",
            object_ids=[consultation.pk],
            patient_id=consultation.patient_id,
            organization_id=consultation.organization_id,
        )
        return self.consultation_body(consultation, status_code=201)


class QueueEntryApi(ClinicApiView):
    """GET: position and estimated wait. DELETE: the patient leaves the queue (204)."""

    @extend_schema(summary="Read a queue entry", responses={200: QueueEntryOutput})
    def get(self, request, entry_id: int):
        entry = selectors.queue_entry_get_for_user(user=request.user, entry_id=entry_id)
        estimate = selectors.queue_wait_estimator(provider=entry.provider)
        audit_queue_entries(request=request, action=AuditAction.READ, entries=[entry])
        return Response(QueueEntryOutput(entry, context={"estimate": estimate}).data)

    @extend_schema(
        summary="Leave the queue (the patient)",
        responses={
            204: None,
            **error(403, "forbidden"),
            **error(409, "invalid_transition"),
        },
    )
    def delete(self, request, entry_id: int):
        entry = selectors.queue_entry_get_for_user(user=request.user, entry_id=entry_id)
        services.queue_leave(entry=entry, actor=request.user)
        audit_queue_entries(request=request, action=AuditAction.UPDATE, entries=[entry])
        return Response(status=status.HTTP_204_NO_CONTENT)
