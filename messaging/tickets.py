"""Websocket tickets: single use, short-lived, bound to the user and token that asked.

Browsers cannot set an Authorization header on a websocket, and a bearer token in a URL
ends up in access logs. So a client asks ``POST ws-ticket`` (bearer-authenticated) for a
ticket and opens the socket with ``?ticket=``. The ticket is kept in Redis (the shared
cache) for MESSAGING_TICKET_TTL_SECONDS under its SHA-256 digest, and taken exactly once.

A ticket may be bound to one consultation: then it opens that consultation's socket only
(the consumer closes any other with 4403). The visit page's join-link session gets only
such tickets, so its one visit does not open the user's other visits' chats.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

from django.conf import settings
from django.core.cache import caches
from redis.exceptions import RedisError

from medease.exceptions import ServiceUnavailable

logger = logging.getLogger("medease.messaging")

# The cache alias whose errors surface (the default one hides them): handing out a ticket
# that was never stored would only fail later, at connect, with a misleading 4401.
_CACHE_ALIAS = "ratelimit"
_KEY = "wsticket:{digest}"
# Redis down or timing out (the circuit breaker fails fast with a ConnectionError).
_STORE_ERRORS = (RedisError, OSError)
_UNAVAILABLE = "Websocket tickets are unavailable for a moment. Try again shortly."


def _key(raw: str) -> str:
    return _KEY.format(digest=hashlib.sha256(raw.encode()).hexdigest())


def ticket_store(*, user_id: int, token_id: int | None, consultation_id: int | None = None) -> str:
    """Create and store a ticket (for any consultation of the user when ``consultation_id``
    is None); the raw value is returned once."""
    raw = secrets.token_urlsafe(32)
    try:
        caches[_CACHE_ALIAS].set(
            _key(raw),
            {"user_id": user_id, "token_id": token_id, "consultation_id": consultation_id},
            timeout=settings.MESSAGING_TICKET_TTL_SECONDS,
        )
    except _STORE_ERRORS as exc:  # the client retries (503 + Retry-After), not a 500
        logger.warning("websocket ticket not stored, cache unavailable: %r", exc)
        raise ServiceUnavailable(_UNAVAILABLE) from exc
    return raw


def ticket_take(*, raw: str) -> dict | None:
    """The ticket's binding if it exists, removing it; None when unknown, used or expired
    (ServiceUnavailable when the store is down).

    Take-once without a race: two connects with the same ticket may both read it, but
    ``delete`` reports whether it removed the key (Redis DEL's count, locmem's lock), and
    only the caller whose delete removed it may use it.
    """
    if not raw or len(raw) > 128:
        return None
    cache = caches[_CACHE_ALIAS]
    key = _key(raw)
    try:
        binding = cache.get(key)
        if binding is None or not cache.delete(key):
            return None
    except _STORE_ERRORS as exc:
        raise ServiceUnavailable(_UNAVAILABLE) from exc
    return binding
