"""Websocket routes (docs/api.md, "Websocket")."""

from django.urls import path

from messaging.consumers import ConsultationChatConsumer

websocket_urlpatterns = [
    path(
        "ws/consultations/<int:consultation_id>/",
        ConsultationChatConsumer.as_asgi(),
        name="ws-consultation-chat",
    ),
]
