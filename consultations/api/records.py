"""A patient's medical record: read (newest first) and append (entries, corrections)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response

from consultations import selectors, services
from consultations.api._base import ClinicApiView, paginator_for, valid
from consultations.audit import AuditAction, audit_log
from consultations.serializers import RecordEntryOutput, RecordInput, RecordListInput
from medease.schema import error


class PatientRecordsApi(ClinicApiView):
    """GET: the patient's record entries, newest first. POST: a treating provider or the
    clinic's staff adds an entry (or a correction, with ``supersedes``)."""

    @extend_schema(
        summary="List a patient's record entries",
        parameters=[RecordListInput],
        responses={200: RecordEntryOutput(many=True)},
    )
    def get(self, request, patient_id: int):
        patient = selectors.patient_get_for_records(user=request.user, patient_id=patient_id)
        params = valid(RecordListInput, request.query_params)
        queryset = selectors.records_for_user(
            user=request.user,
            patient=patient,
            kind=params.get("kind"),
            current_only=params["current"],
        )
        paginator = paginator_for(("-id",))
        page = paginator.paginate_queryset(queryset, request, view=self)
        data = RecordEntryOutput(page, many=True).data
        audit_log(
            request=request,
            action=AuditAction.READ,
            object_type="medical_record_entry",
            object_ids=[entry.pk for entry in page] or [f"patient:{patient.pk}"],
            patient_id=patient.pk,
            organization_id=request.user.organization_id,
        )
        return paginator.get_paginated_response(data)

    @extend_schema(
        summary="Add a record entry or a correction",
        request=RecordInput,
        responses={
            201: RecordEntryOutput,
            **error(403, "forbidden"),
            **error(409, "already_superseded"),
        },
    )
    def post(self, request, patient_id: int):
        patient = selectors.patient_get_for_records(user=request.user, patient_id=patient_id)
        data = valid(RecordInput, request.data)
        entry = services.medical_record_add(
            author=request.user,
            patient=patient,
            kind=data["kind"],
            text=data["text"],
            consultation_id=data.get("consultation"),
            supersedes_id=data.get("supersedes"),
        )
        audit_log(
            request=request,
            action=AuditAction.CREATE,
            object_type="medical_record_entry",
            object_ids=[entry.pk],
            patient_id=patient.pk,
            organization_id=entry.organization_id,
        )
        return Response(RecordEntryOutput(entry).data, status=status.HTTP_201_CREATED)
