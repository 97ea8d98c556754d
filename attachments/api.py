"""Attachments API: request an upload, complete it, read one (with signed URLs).

Every answer that carries a URL is ``Cache-Control: no-store``; every download URL handed
out is an audit event.
"""

from __future__ import annotations

from django.utils.cache import add_never_cache_headers
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from attachments import output, selectors, services
from attachments.models import Attachment
from attachments.serializers import AttachmentCreatedOutput, AttachmentCreateInput, AttachmentOutput
from attachments.storage import get_store
from consultations import selectors as consultation_selectors
from medease.audit import AuditAction, audit_log_rows
from medease.schema import error


def _no_store(response: Response) -> Response:
    add_never_cache_headers(response)  # includes no-store: signed URLs must not be cached
    return response


def attachment_body(request, attachment: Attachment) -> dict:
    """The attachment with fresh signed URLs, each one audited (one INSERT)."""
    audit_rows: list[output.TypedAuditRow] = []
    body = output.signed_body(request, attachment, audit_rows)
    audit_log_rows(
        request=request,
        action=AuditAction.READ,
        object_type=output.AUDIT_TYPE,
        rows=[(object_id, patient_id, org_id) for _, object_id, patient_id, org_id in audit_rows],
    )
    return body


class ConsultationAttachmentsApi(APIView):
    @extend_schema(
        summary="Start an upload to a consultation",
        request=AttachmentCreateInput,
        responses={
            201: AttachmentCreatedOutput,
            **error(403, "forbidden"),
            **error(409, "consultation_closed"),
            **error(
                413,
                description="The body (`too_large`) or the file (`too_large`, over "
                "ATTACHMENT_MAX_BYTES; `quota_exceeded`, over the clinic's quota) is too large.",
            ),
            **error(
                415,
                description="The body is not JSON (`unsupported_media_type`) or the file's "
                "type is not accepted (`unsupported_type`).",
            ),
            **error(503),
        },
    )
    def post(self, request, consultation_id: int):
        data = AttachmentCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        consultation = consultation_selectors.consultation_get_for_user(
            user=request.user, consultation_id=consultation_id
        )
        attachment = services.attachment_create(
            uploader=request.user, consultation=consultation, **data.validated_data
        )
        return _created(request, attachment)


def _created(request, attachment: Attachment) -> Response:
    """201 with the signed upload target of a pending attachment."""
    upload = get_store().upload_target(
        key=attachment.storage_key, content_type=attachment.content_type
    )
    upload["url"] = request.build_absolute_uri(upload["url"])
    body = {"id": attachment.pk, "status": attachment.status, "upload": upload}
    return _no_store(Response(AttachmentCreatedOutput(body).data, status=201))


class PatientAttachmentsApi(APIView):
    @extend_schema(
        summary="Start an upload to a patient's record",
        description="A treating provider or the clinic's staff adds a file to the record "
        "outside any consultation; attach it to a record entry once completed.",
        request=AttachmentCreateInput,
        responses={
            201: AttachmentCreatedOutput,
            **error(403, "forbidden"),
            **error(413, description="`too_large` or `quota_exceeded`, as for consultations."),
            **error(415, description="`unsupported_media_type` or `unsupported_type`."),
            **error(503),
        },
    )
    def post(self, request, patient_id: int):
        data = AttachmentCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        patient = consultation_selectors.patient_get_for_records(
            user=request.user, patient_id=patient_id
        )
        attachment = services.attachment_create_for_record(
            uploader=request.user, patient=patient, **data.validated_data
        )
        return _created(request, attachment)


class AttachmentCompleteApi(APIView):
    @extend_schema(
        summary="Complete an upload",
        request=None,
        responses={
            200: AttachmentOutput,
            **error(
                400,
                description="`upload_mismatch`, `upload_rejected`: the uploaded "
                "object is missing or not what was announced.",
            ),
            **error(409, "upload_rejected"),
            **error(503),
        },
    )
    def post(self, request, attachment_id: int):
        attachment = selectors.attachment_get_for_user(
            user=request.user, attachment_id=attachment_id
        )
        attachment = services.attachment_complete(attachment=attachment, user=request.user)
        return _no_store(Response(attachment_body(request, attachment)))


class AttachmentDetailApi(APIView):
    @extend_schema(
        summary="Read an attachment (with signed URLs)",
        responses={200: AttachmentOutput, **error(503)},
    )
    def get(self, request, attachment_id: int):
        attachment = selectors.attachment_get_for_user(
            user=request.user, attachment_id=attachment_id
        )
        return _no_store(Response(attachment_body(request, attachment)))
