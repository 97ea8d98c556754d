"""Websocket authentication, in the ASGI stack (consumers only check ``scope["user"]``).

* ``?ticket=``: a single-use ticket from ``POST ws-ticket``. It carries no ambient
  credential, so it is accepted from any origin (apps, other front-end hosts).
* No ticket: a browser's Django session cookie (the staff console). Cookies are sent by
  the browser whatever page opens the socket, so these connections are accepted only from
  allowed origins (cross-site websocket hijacking).

The result is ``scope["user"]`` (AnonymousUser when nothing authenticated) and
``scope["auth_error"]``: ``None``, ``"bad_ticket"``, ``"no_credentials"`` (the consumer
closes with 4401), ``"origin_not_allowed"`` (4403) or ``"unavailable"`` (1013, try again).
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import validate_host

from messaging import selectors, tickets

logger = logging.getLogger("medease.messaging")


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def origin_allowed(scope: dict) -> bool:
    """Whether a cookie-authenticated connection's Origin may use the session."""
    origin = _header(scope, b"origin")
    if origin is None:
        # Browsers always send Origin on websockets; without one this is not a browser
        # page that a third-party site could have opened.
        return True
    allowed = settings.MESSAGING_WS_ALLOWED_ORIGINS
    if allowed:
        return origin.rstrip("/").lower() in {o.rstrip("/").lower() for o in allowed}
    host = urlsplit(origin).hostname
    return bool(host) and validate_host(host, settings.ALLOWED_HOSTS)


def _redeem_ticket(raw: str):
    binding = tickets.ticket_take(raw=raw)
    if binding is None:
        return None
    return selectors.ticket_user(user_id=binding["user_id"], token_id=binding.get("token_id"))


class ChatAuthMiddleware(BaseMiddleware):
    """Sets ``scope["user"]`` from a ticket or (from allowed origins) a session cookie."""

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        scope["user"], scope["auth_error"] = await self.authenticate(scope)
        return await super().__call__(scope, receive, send)

    async def authenticate(self, scope: dict):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        ticket = (query.get("ticket") or [None])[0]
        if ticket is not None:
            try:
                user = await database_sync_to_async(_redeem_ticket)(ticket)
            except Exception:  # Redis or the database down: not the client's fault.
                logger.exception("websocket ticket could not be checked")
                return AnonymousUser(), "unavailable"
            return (user, None) if user is not None else (AnonymousUser(), "bad_ticket")
        if scope.get("cookies", {}).get(settings.SESSION_COOKIE_NAME):
            if not origin_allowed(scope):
                return AnonymousUser(), "origin_not_allowed"
            user = await get_user(scope)
            if user.is_authenticated:
                return user, None
        return AnonymousUser(), "no_credentials"
