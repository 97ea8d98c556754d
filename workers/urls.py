from django.urls import path

from workers import api

urlpatterns = [
    path("notifications", api.NotificationListApi.as_view(), name="notifications"),
    path(
        "notifications/preferences",
        api.NotificationPreferenceApi.as_view(),
        name="notification-preferences",
    ),
]
