"""A patient's medical record: read (newest first) and append (entries, corrections)."""

from __future__ import annotations

from django.utils.cache import add_never_cache_headers
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response

from consultations import selectors, services
from consultations.api._base import ClinicApiView, paginator_for, valid
from consultations.audit import AuditAction, audit_log, audit_typed_rows
from consultations.serializers import RecordEntryOutput, RecordInput, RecordListInput
from consultations.services.records import record_attachment_outputs
from medease.schema import error


def _no_store(response: Response) -> Response:
    # Entries may carry signed download URLs: no cache may keep them.
    add_never_cache_headers(response)
    return response


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
        attachments, url_rows = record_attachment_outputs(request=request, entries=page)
        data = RecordEntryOutput(page, many=True, context={"attachments": attachments}).data
        # The entries and every download URL handed out, in one audit write.
        audit_typed_rows(
            request=request,
            action=AuditAction.READ,
            rows=[
                ("medical_record_entry", object_id, patient.pk, request.user.organization_id)
                for object_id in [entry.pk for entry in page] or [f"patient:{patient.pk}"]
            ]
            + url_rows,
        )
        return _no_store(paginator.get_paginated_response(data))

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
            attachment_ids=data["attachments"],
        )
        audit_log(
            request=request,
            action=AuditAction.CREATE,
            object_type="medical_record_entry",
            object_ids=[entry.pk],
            patient_id=patient.pk,
            organization_id=entry.organization_id,
        )
        attachments, url_rows = record_attachment_outputs(request=request, entries=[entry])
        audit_typed_rows(request=request, action=AuditAction.READ, rows=url_rows)
        body = RecordEntryOutput(entry, context={"attachments": attachments}).data
        return _no_store(Response(body, status=status.HTTP_201_CREATED))
