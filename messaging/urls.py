"""Chat routes under /api/v1/ (docs/api.md); websockets are in routing.py."""

from django.urls import path

from messaging import api

urlpatterns = [
    path(
        "consultations/<int:consultation_id>/messages",
        api.ConsultationMessagesApi.as_view(),
        name="consultation-messages",
    ),
    path(
        "consultations/<int:consultation_id>/read",
        api.ConsultationReadApi.as_view(),
        name="consultation-read",
    ),
    path("ws-ticket", api.WsTicketApi.as_view(), name="ws-ticket"),
]
