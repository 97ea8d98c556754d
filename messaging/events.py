"""Fan-out through the channel layer: group names, event shapes, failure-proof sends.

The database is the truth and the channel layer the fast path (delivery is at-most-once):
a failed or slow fan-out is logged and dropped, never raised into the write that caused it.
Clients that missed something resync with ``?after=<last seen id>``.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

logger = logging.getLogger("medease.messaging")


def consultation_group(consultation_id: int) -> str:
    return f"consultation.{consultation_id}"


def user_group(user_id: int) -> str:
    """Every socket of a user, whatever the consultation (closing on revocation)."""
    return f"user.{user_id}"


async def agroup_send(group: str, event: dict) -> bool:
    """group_send bounded by MESSAGING_FANOUT_TIMEOUT_SECONDS; False (logged) on failure."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        await asyncio.wait_for(
            layer.group_send(group, event), timeout=settings.MESSAGING_FANOUT_TIMEOUT_SECONDS
        )
    except Exception as exc:  # Redis down, slow or full: the stored data is the truth.
        logger.warning(
            "fan-out of %s to %s failed: %r", event.get("type"), group, exc, exc_info=False
        )
        return False
    return True


def group_send(group: str, event: dict) -> bool:
    """Synchronous :func:`agroup_send` (services, listeners). Never raises."""
    try:
        return async_to_sync(agroup_send)(group, event)
    except Exception as exc:  # e.g. no usable event loop; same rule: log, do not fail.
        logger.warning("fan-out of %s to %s failed: %r", event.get("type"), group, exc)
        return False


def group_send_on_commit(group: str, event: dict) -> None:
    """Send after the current transaction commits; a rolled-back write sends nothing."""
    transaction.on_commit(lambda: group_send(group, event))


# --- Event shapes (channel layer → consumer). Handlers are named after ``type``. ---------


def message_event(payload: dict) -> dict:
    return {"type": "chat.message", "message": payload}


def read_event(*, user_id: int, message_id: int) -> dict:
    return {"type": "chat.read", "user": user_id, "message_id": message_id}


def typing_event(*, user_id: int) -> dict:
    return {"type": "chat.typing", "user": user_id}


def presence_event(*, user_id: int, online: bool) -> dict:
    return {"type": "chat.presence", "user": user_id, "online": online}


def revoked_event() -> dict:
    return {"type": "session.revoked"}
