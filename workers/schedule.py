"""The one beat schedule. Each job is idempotent and safe when two runs overlap."""

from __future__ import annotations

from django.conf import settings

BEAT_SCHEDULE: dict[str, dict] = {
    "purge-expired-tokens": {
        "task": "accounts.purge_expired_tokens",
        "schedule": 60 * 60,
    },
    # Notifications (workers). `expires`: a run beat sent while no worker was up is
    # dropped instead of piling up; the next run does the same work.
    "notifications-sweep-outbox": {
        "task": "workers.sweep_outbox",
        "schedule": settings.NOTIFICATION_SWEEP_SECONDS,
        "options": {"queue": "maintenance", "expires": settings.NOTIFICATION_SWEEP_SECONDS},
    },
    # Reminders are the clinic core's (consultations/tasks.py); the outbox delivers them.
    "notifications-send-reminders": {
        "task": "consultations.send_reminders",
        "schedule": settings.NOTIFICATION_REMINDERS_SECONDS,
        "options": {"queue": "maintenance", "expires": settings.NOTIFICATION_REMINDERS_SECONDS},
    },
    # Chat (messaging): monthly message partitions kept ahead (PostgreSQL; a no-op elsewhere).
    "messaging-ensure-partitions": {
        "task": "messaging.ensure_partitions",
        "schedule": 6 * 60 * 60,
        "options": {"queue": "maintenance", "expires": 6 * 60 * 60},
    },
    # Clinic core (consultations/tasks.py).
    "consultations-materialize-slots": {
        "task": "consultations.materialize_slots",
        "schedule": 60 * 60,
        "options": {"queue": "maintenance", "expires": 60 * 60},
    },
    "consultations-expire-queue-entries": {
        "task": "consultations.expire_queue_entries",
        "schedule": 5 * 60,
        "options": {"queue": "maintenance", "expires": 5 * 60},
    },
    "consultations-mark-no-shows": {
        "task": "consultations.mark_no_shows",
        "schedule": 5 * 60,
        "options": {"queue": "maintenance", "expires": 5 * 60},
    },
    # Video visits (visits/tasks.py): no-shows by who joined the call, absent providers reported.
    "visits-attribute-no-shows": {
        "task": "visits.attribute_no_shows",
        "schedule": 5 * 60,
        "options": {"queue": "maintenance", "expires": 5 * 60},
    },
    # Attachments (attachments/tasks.py): uploads never completed are removed.
    "attachments-cleanup": {
        "task": "attachments.cleanup",
        "schedule": settings.ATTACHMENT_CLEANUP_SECONDS,
        "options": {"queue": "maintenance", "expires": settings.ATTACHMENT_CLEANUP_SECONDS},
    },
}
