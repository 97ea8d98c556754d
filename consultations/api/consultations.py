"""Consultations: the caller's list, booking, one consultation, its transitions (one view,
its actions from ``consultations.lifecycle``) and rescheduling."""

from __future__ import annotations

import re

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response

from accounts.models import Role
from consultations import selectors, services
from consultations.api._base import ClinicApiView, is_clinician, paginator_for, valid
from consultations.audit import AuditAction, audit_consultations, audit_log
from consultations.lifecycle import Transition
from consultations.models import Consultation
from consultations.permissions import require_patient
from consultations.serializers import (
    BookInput,
    CancelInput,
    CompleteInput,
    ConsultationListInput,
    ConsultationOutput,
    RescheduleInput,
    consultation_rows,
)
from medease import ratelimit
from medease.exceptions import InvalidInput
from medease.schema import AutoSchema, error

CONSULTATION_ORDERING = ("scheduled_start", "id")
_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
_BOOKING_CONFLICTS = ("slot_taken", "slot_unavailable", "provider_busy", "idempotency_key_reused")


class ConsultationsApi(ClinicApiView):
    """GET: the caller's consultations by scheduled start. POST: a patient books a slot."""

    @extend_schema(
        summary="List my consultations",
        parameters=[ConsultationListInput],
        responses={200: ConsultationOutput(many=True)},
    )
    def get(self, request):
        # Without a filter there is nothing to validate (the serializer costs more than the
        # rows of a small page); a given status goes through it for the usual 400.
        status = None
        if "status" in request.query_params:
            status = valid(ConsultationListInput, request.query_params).get("status")
        user = request.user
        clinician = is_clinician(user)

        def fetch(**window) -> list[dict]:
            return selectors.consultation_rows_page(
                user=user,
                clinician=clinician,
                ordering=CONSULTATION_ORDERING,
                status=status,
                **window,
            )

        paginator = paginator_for(CONSULTATION_ORDERING)
        page = paginator.paginate_rows(fetch, request, model=Consultation)
        unread = selectors.unread_counts_for(
            user=request.user, consultation_ids=[row["id"] for row in page]
        )
        data = consultation_rows(page, unread_counts=unread, clinician=clinician)
        audit_consultations(request=request, action=AuditAction.READ, consultations=data)
        return paginator.get_paginated_response(data)

    @extend_schema(
        summary="Book a slot (patients)",
        request=BookInput,
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
        responses={
            201: ConsultationOutput,
            200: OpenApiResponse(ConsultationOutput, description="A repeated Idempotency-Key."),
            **error(403, "forbidden"),
            **error(409, *_BOOKING_CONFLICTS),
        },
    )
    def post(self, request):
        require_patient(request.user, action="book consultations")
        key = request.headers.get("Idempotency-Key", "").strip()
        if key and not _IDEMPOTENCY_KEY_RE.match(key):
            raise InvalidInput(
                "Idempotency-Key must be 1 to 128 printable ASCII characters.",
                fields={"Idempotency-Key": ["Invalid."]},
            )
        data = valid(BookInput, request.data)
        ratelimit.hit(request, name="booking_user", key=ratelimit.by_user)
        consultation, created = services.consultation_book(
            patient=request.user, slot_id=data["slot"], reason=data["reason"], idempotency_key=key
        )
        audit_log(
            request=request,
            action=AuditAction.CREATE if created else AuditAction.READ,
            object_type="consultation",
            object_ids=[consultation.pk],
            patient_id=consultation.patient_id,
            organization_id=consultation.organization_id,
        )
        # A replayed request answers 200 with the booking it made the first time.
        return self.consultation_body(
            consultation, status_code=201 if created else 200, created=created
        )


class ConsultationDetailApi(ClinicApiView):
    """One consultation, with the caller's ``unread_count``."""

    @extend_schema(summary="Read a consultation", responses={200: ConsultationOutput})
    def get(self, request, consultation_id: int):
        user = request.user
        clinician = is_clinician(user)
        row = selectors.consultation_row_get_for_user(
            user=user, consultation_id=consultation_id, clinician=clinician
        )
        unread = selectors.unread_counts_for(user=user, consultation_ids=[row["id"]])
        body = consultation_rows([row], unread_counts=unread, clinician=clinician)[0]
        audit_consultations(request=request, action=AuditAction.READ, consultations=[body])
        return Response(body)


def _audit_update(request, consultation) -> None:
    audit_consultations(request=request, action=AuditAction.UPDATE, consultations=[consultation])


# Actions that record the caller's text read it from this input shape and key (by the
# table's ``note_field``); the other actions take no body.
_NOTE_INPUTS = {
    "cancellation_reason": (CancelInput, "reason"),
    "provider_notes": (CompleteInput, "provider_notes"),
}


class _TransitionSchema(AutoSchema):
    """Each action's route documents its own body (the note it reads, or none) and conflicts."""

    def get_summary(self):
        action = self.view.transition.action
        if action == "no_show":
            return "Mark a consultation as a no-show"
        return f"{action.capitalize()} a consultation"

    def get_request_serializer(self):
        note_field = self.view.transition.note_field
        return _NOTE_INPUTS[note_field][0] if note_field else None

    def get_response_serializers(self):
        transition = self.view.transition
        conflicts = ["invalid_transition"]
        if transition.patient_cutoff:
            conflicts.append("cancellation_closed")
        if transition.after_start:
            conflicts.append("too_early")
        return {200: ConsultationOutput, **error(403, "forbidden"), **error(409, *conflicts)}


class ConsultationTransitionApi(ClinicApiView):
    """POST ``consultations/{id}/<path>`` for each action of the lifecycle table with an
    endpoint (cancel, start, complete, no-show): 200 with the consultation, 409 if invalid."""

    transition: Transition | None = None
    schema = _TransitionSchema()

    def post(self, request, consultation_id: int):
        consultation = selectors.consultation_get_for_user(
            user=request.user, consultation_id=consultation_id
        )
        note = None
        if self.transition.note_field:
            shape, key = _NOTE_INPUTS[self.transition.note_field]
            note = valid(shape, request.data)[key]
        services.consultation_transition(
            consultation=consultation,
            action=self.transition.action,
            actor=request.user,
            note=note,
        )
        _audit_update(request, consultation)
        return self.consultation_body(consultation)


class ConsultationRescheduleApi(ClinicApiView):
    """POST ``{slot}``: cancel and re-book in one transaction → 201 with the new consultation."""

    @extend_schema(
        summary="Reschedule: cancel and book another slot of the same provider",
        request=RescheduleInput,
        responses={
            201: ConsultationOutput,
            **error(403, "forbidden"),
            **error(
                409,
                "invalid_transition",
                "cancellation_closed",
                *_BOOKING_CONFLICTS[:3],  # no Idempotency-Key here
            ),
        },
    )
    def post(self, request, consultation_id: int):
        consultation = selectors.consultation_get_for_user(
            user=request.user, consultation_id=consultation_id
        )
        data = valid(RescheduleInput, request.data)
        if request.user.role == Role.PATIENT:
            ratelimit.hit(request, name="booking_user", key=ratelimit.by_user)
        new = services.consultation_reschedule(
            consultation=consultation, actor=request.user, slot_id=data["slot"]
        )
        audit_consultations(
            request=request, action=AuditAction.UPDATE, consultations=[consultation, new]
        )
        return self.consultation_body(new, status_code=201)
