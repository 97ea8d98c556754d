"""Call events on the channel layer (the consultation websocket delivers them).

Visits sit below the chat (messaging imports visits, never the reverse), so the group name is
spelled here too: it must stay ``messaging.events.consultation_group``'s, which a test checks.
Delivery is at-most-once; a client that missed a ``call.state`` reads ``GET …/call``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

logger = logging.getLogger("medease.visits")


def consultation_group(consultation_id: int) -> str:
    return f"consultation.{consultation_id}"


def call_state_event(call_payload: dict) -> dict:
    return {"type": "call.state", "call": call_payload}


def call_signal_event(*, consultation_id: int, sender_id: int, recipient_id: int, data) -> dict:
    # Fanned out to the consultation's group; only the recipient's sockets write it out.
    return {
        "type": "call.signal",
        "consultation": consultation_id,
        "from": sender_id,
        "to": recipient_id,
        "data": data,
    }


# The chat's own fan-out (messaging.hub, which writes to the consultation's sockets) registers
# itself here when the chat app starts: visits cannot import the chat, which sits above it.
# Without it (visits on their own) the channel layer's group_send is used.
_deliver: Callable[[str, dict], Awaitable[bool]] | None = None


def delivery_register(deliver: Callable[[str, dict], Awaitable[bool]]) -> None:
    """Route call events through ``deliver(group, event)`` (bounded, never raises)."""
    global _deliver
    _deliver = deliver


async def asend(consultation_id: int, event: dict) -> bool:
    """group_send bounded by MESSAGING_FANOUT_TIMEOUT_SECONDS; False (logged) on failure."""
    if _deliver is not None:
        return await _deliver(consultation_group(consultation_id), event)
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        await asyncio.wait_for(
            layer.group_send(consultation_group(consultation_id), event),
            timeout=settings.MESSAGING_FANOUT_TIMEOUT_SECONDS,
        )
    except Exception as exc:  # Redis down or slow: the call's rows are the truth.
        logger.warning("call event %s not sent: %r", event.get("type"), exc)
        return False
    return True


def send_on_commit(consultation_id: int, event: dict) -> None:
    """Send after the current transaction commits; a rolled-back change sends nothing."""

    def send() -> None:
        try:
            async_to_sync(asend)(consultation_id, event)
        except Exception as exc:  # e.g. no usable event loop: log, never fail the write
            logger.warning("call event %s not sent: %r", event.get("type"), exc)

    transaction.on_commit(send)
