"""The one beat schedule. Each job is idempotent and safe when two runs overlap."""

from __future__ import annotations

BEAT_SCHEDULE: dict[str, dict] = {
    "purge-expired-tokens": {
        "task": "accounts.purge_expired_tokens",
        "schedule": 60 * 60,
    },
}
