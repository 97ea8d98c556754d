"""Attachment routes under /api/v1/ (docs/api.md, "Attachments"), and the embedded default's
signed file URLs under /files/ (``file_urlpatterns``: no bearer token, no API body cap)."""

from django.urls import path

from attachments import api, files

urlpatterns = [
    path(
        "consultations/<int:consultation_id>/attachments",
        api.ConsultationAttachmentsApi.as_view(),
        name="consultation-attachments",
    ),
    path(
        "patients/<int:patient_id>/attachments",
        api.PatientAttachmentsApi.as_view(),
        name="patient-attachments",
    ),
    path(
        "attachments/<int:attachment_id>/complete",
        api.AttachmentCompleteApi.as_view(),
        name="attachment-complete",
    ),
    path("attachments/<int:attachment_id>", api.AttachmentDetailApi.as_view(), name="attachment"),
]

file_urlpatterns = [
    path("upload/<str:token>", files.upload, name="attachments-file-upload"),
    path("download/<str:token>", files.download, name="attachments-file-download"),
]
