"""Websocket authentication, in the ASGI stack (consumers only check ``scope["user"]``).

* ``?ticket=``: a single-use ticket from ``POST ws-ticket``. It carries no ambient
  credential, so it is accepted from any origin (apps, other front-end hosts).
* No ticket: a browser's Django session cookie (the staff console). Cookies are sent by
  the browser whatever page opens the socket, so these connections are accepted only from
  allowed origins (cross-site websocket hijacking).

The result is ``scope["user"]`` (AnonymousUser when nothing authenticated),
``scope["ticket_consultation"]`` (the consultation a ticket is bound to, else None: the
consumer refuses any other with 4403) and ``scope["auth_error"]``: ``None``,
``"bad_ticket"``, ``"no_credentials"``, ``"mfa_required"`` (the consumer closes with
4401), ``"origin_not_allowed"`` (4403) or ``"unavailable"`` (1013, try again).

A socket authenticated by a session lives no longer than the session: signing out of the
console (``session_sockets_close``) closes it with 4401 on every node, through a channel-
layer group per session that this middleware watches for the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from urllib.parse import parse_qs, urlsplit

from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import validate_host
from django_otp import DEVICE_ID_SESSION_KEY

from accounts import mfa
from messaging import events, selectors, tickets

logger = logging.getLogger("medease.messaging")

# As for a revoked token: the client must authenticate again.
CLOSE_SESSION_ENDED = 4401


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
    """(the ticket's user or None, the consultation it is bound to or None)."""
    binding = tickets.ticket_take(raw=raw)
    if binding is None:
        return None, None
    user = selectors.ticket_user(user_id=binding["user_id"], token_id=binding.get("token_id"))
    # Tickets stored before binding existed have no such key: unbound, as they were.
    return user, binding.get("consultation_id")


def _session_passed_mfa(user, session) -> bool:
    """A console session may chat only once it passed the second factor the console asks
    for: not while the clinic requires an authenticator the user has not set up, and not
    from a password-only session of a user who has one (the console's own gate)."""
    if mfa.mfa_enrolment_pending(user=user):
        return False
    return session.get(DEVICE_ID_SESSION_KEY) is not None or not mfa.mfa_enabled(user=user)


def session_group(session_key: str) -> str:
    """The channel-layer group of the sockets one console session opened."""
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def session_sockets_close(*, session_key: str) -> None:
    """Close every socket authenticated by this session, on every node (after commit)."""
    events.group_send_on_commit(session_group(session_key), {"type": "session.ended"})


class _SessionWatch:
    """Wraps a socket's ``receive``: when its session ends, the socket is closed (4401) and
    the consumer is told the client disconnected, so it cleans up as for any disconnect."""

    def __init__(self, group: str, receive, send) -> None:
        self.group = group
        self._receive = receive
        self._send = send
        self._layer = get_channel_layer()
        self._channel: str | None = None
        self._ended: asyncio.Future | None = None
        self._closed = False

    async def start(self) -> None:
        if self._layer is None:
            return
        try:
            self._channel = await self._layer.new_channel()
            await self._layer.group_add(self.group, self._channel)
        except Exception as exc:  # channel layer down: the consumer refuses the socket anyway
            logger.warning("session watch unavailable: %r", exc)
            self._channel = None
            return
        self._ended = asyncio.ensure_future(self._layer.receive(self._channel))

    async def stop(self) -> None:
        if self._ended is not None:
            self._ended.cancel()
            with contextlib.suppress(BaseException):
                await self._ended
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._layer.group_discard(self.group, self._channel)

    async def receive(self):
        if self._closed:
            return {"type": "websocket.disconnect", "code": CLOSE_SESSION_ENDED}
        if self._ended is None:
            return await self._receive()
        inbound = asyncio.ensure_future(self._receive())
        try:
            await asyncio.wait({inbound, self._ended}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            inbound.cancel()
            raise
        if inbound.done():
            return inbound.result()
        ended, self._ended = self._ended, None
        if ended.cancelled() or ended.exception() is not None:
            # Lost the channel layer: stop watching, keep the socket (as for other events).
            logger.warning(
                "session watch lost: %r", None if ended.cancelled() else ended.exception()
            )
            return await inbound
        inbound.cancel()
        self._closed = True
        await self._send({"type": "websocket.close", "code": CLOSE_SESSION_ENDED})
        return {"type": "websocket.disconnect", "code": CLOSE_SESSION_ENDED}


class ChatAuthMiddleware(BaseMiddleware):
    """Sets ``scope["user"]`` from a ticket or (from allowed origins) a session cookie."""

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        scope["ticket_consultation"] = None
        scope["user"], scope["auth_error"], session_key = await self._authenticate(scope)
        if session_key is None:
            return await super().__call__(scope, receive, send)
        watch = _SessionWatch(session_group(session_key), receive, send)
        await watch.start()
        # A logout between the cookie check and the watch joining its group sent its close
        # to nobody: look at the session once more now that a close would arrive.
        if not await database_sync_to_async(scope["session"].exists)(session_key):
            scope["user"], scope["auth_error"] = AnonymousUser(), "no_credentials"
        try:
            return await super().__call__(scope, watch.receive, send)
        finally:
            await watch.stop()

    async def authenticate(self, scope: dict):
        user, error, _session_key = await self._authenticate(scope)
        return user, error

    async def _authenticate(self, scope: dict):
        """(user, auth_error, the session key when a session authenticated the socket);
        sets ``scope["ticket_consultation"]`` when a bound ticket authenticated it."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        ticket = (query.get("ticket") or [None])[0]
        if ticket is not None:
            try:
                user, consultation_id = await database_sync_to_async(_redeem_ticket)(ticket)
            except Exception:  # Redis or the database down: not the client's fault.
                logger.exception("websocket ticket could not be checked")
                return AnonymousUser(), "unavailable", None
            if user is None:
                return AnonymousUser(), "bad_ticket", None
            scope["ticket_consultation"] = consultation_id
            return user, None, None
        if scope.get("cookies", {}).get(settings.SESSION_COOKIE_NAME):
            if not origin_allowed(scope):
                return AnonymousUser(), "origin_not_allowed", None
            user = await get_user(scope)
            if user.is_authenticated:
                if not await database_sync_to_async(_session_passed_mfa)(user, scope["session"]):
                    return AnonymousUser(), "mfa_required", None
                return user, None, scope["session"].session_key
        return AnonymousUser(), "no_credentials", None
