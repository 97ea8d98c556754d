"""Reads of the notification outbox and preferences, always scoped to the requesting user."""

from __future__ import annotations

from django.db.models import QuerySet

from workers.models import Notification, NotificationPreference


def notifications_for_user(*, user) -> QuerySet[Notification]:
    """The user's own notifications, newest first (ids grow with creation time)."""
    return (
        Notification.objects.visible_to(user)
        .only("id", "kind", "channel", "status", "created_at", "sent_at")
        .order_by("-id")
    )


def notification_preference_for_user(*, user) -> NotificationPreference:
    """The user's preferences; an unsaved default (everything on, no quiet hours) if none."""
    preference = NotificationPreference.objects.filter(user=user).first()
    return preference or NotificationPreference(user=user)
