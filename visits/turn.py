"""Short-lived TURN credentials in the TURN REST form (coturn's ``use-auth-secret``).

The username is ``<unix expiry>:<user id>`` and the password base64(HMAC-SHA1(secret,
username)); the TURN server recomputes it from the shared secret and refuses it after the
expiry, so MedEase stores nothing and a leaked credential dies within TURN_TTL_SECONDS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from django.conf import settings


def turn_credential(*, secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), as coturn computes it."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def ice_servers_for(*, user_id: int, now: float | None = None) -> list[dict]:
    """The ``ice_servers`` for ``user_id``: one entry with every TURN URL, or [] when no TURN
    server is configured (the embedded default)."""
    if not settings.TURN_URLS:
        return []
    expiry = int(now if now is not None else time.time()) + settings.TURN_TTL_SECONDS
    username = f"{expiry}:{user_id}"
    return [
        {
            "urls": list(settings.TURN_URLS),
            "username": username,
            "credential": turn_credential(secret=settings.TURN_SECRET, username=username),
        }
    ]
