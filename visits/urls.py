"""Video visit routes under /api/v1/ (DESIGN.md, "Video visits")."""

from django.urls import path

from visits import api

urlpatterns = [
    path(
        "consultations/<int:consultation_id>/call",
        api.ConsultationCallApi.as_view(),
        name="consultation-call",
    ),
]
