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
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from urllib.parse import parse_qs, urlsplit

from channels.db import DatabaseSyncToAsync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.http.cookie import parse_cookie
from django.http.request import validate_host
from django.utils.crypto import constant_time_compare
from django_otp import DEVICE_ID_SESSION_KEY

from accounts import mfa
from medease import db as db_routing
from medease.exceptions import ServiceUnavailable
from messaging import events, tickets

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


# --- Database work of a handshake -----------------------------------------------------------
# Channels' database_sync_to_async (thread_sensitive) runs every socket's database work in
# ONE thread per process: in a reconnect storm each handshake queued behind all the others
# (the soak's reconnects waited over 120 s). What a handshake must read runs on a small
# pool of threads instead, each taking a connection from psycopg's pool per call (and
# giving it back: CONN_MAX_AGE is 0), so a few run at once and a burst waits in the
# executor's queue, not on one thread. SQLite (the embedded default) keeps one thread: it
# has one writer anyway.
HANDSHAKE_THREADS = 4
_handshake_executor: ThreadPoolExecutor | bool | None = None


def handshake_db(func):
    """``func`` as a coroutine function run on the handshake pool, reading the primary
    (an access decision must not be made on a lagging replica)."""

    def on_primary(*args, **kwargs):
        with db_routing.use_primary():
            return func(*args, **kwargs)

    def on_primary_and_let_go(*args, **kwargs):
        try:
            return on_primary(*args, **kwargs)
        finally:
            # Back to the pool after every hop, as close_old_connections does in production:
            # channels' test communicator turns that off, and a pool thread keeping its
            # connection would keep the test database open (it could not be dropped).
            for connection in connections.all(initialized_only=True):
                connection.close()

    async def run(*args, **kwargs):
        global _handshake_executor
        if _handshake_executor is None:
            # Decided from the settings: touching django.db.connection here, on the event
            # loop, would give every socket's task a connection object of its own (they
            # are per context), kept for the socket's life.
            engine = settings.DATABASES[db_routing.PRIMARY]["ENGINE"]
            _handshake_executor = (
                ThreadPoolExecutor(HANDSHAKE_THREADS, "ws-handshake")
                if engine.endswith("postgresql")
                else False
            )
        if _handshake_executor is False:
            return await DatabaseSyncToAsync(on_primary)(*args, **kwargs)
        call = DatabaseSyncToAsync(
            on_primary_and_let_go, thread_sensitive=False, executor=_handshake_executor
        )
        # In a task of its own: SyncToAsync sets context variables in its caller's context
        # (and copies back the thread's), which the socket's task would keep for its life.
        return await asyncio.ensure_future(call(*args, **kwargs))

    return run


def _session_user(session_key: str):
    """The active user of a console session that passed its second factor: (user or None,
    auth_error or None), in one database hop (session, user, authenticator)."""
    engine = import_module(settings.SESSION_ENGINE)
    session = engine.SessionStore(session_key)
    try:
        user_id = session[SESSION_KEY]
        backend_path = session[BACKEND_SESSION_KEY]
    except KeyError:  # no such session (ended, expired) or not signed in
        return None, "no_credentials"
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None, "no_credentials"
    user = load_backend(backend_path).get_user(user_id)
    if user is None:
        return None, "no_credentials"
    # As Django's get_user: a session from before a password change no longer counts.
    if hasattr(user, "get_session_auth_hash"):
        session_hash = session.get(HASH_SESSION_KEY)
        if not (session_hash and constant_time_compare(session_hash, user.get_session_auth_hash())):
            return None, "no_credentials"
    if not _session_passed_mfa(user, session):
        return None, "mfa_required"
    return user, None


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


class ChatAuthMiddleware:
    """Sets ``scope["user"]`` from a ticket or (from allowed origins) a session cookie.

    Outermost in the websocket stack and sessions only when no ticket is given: a ticket
    socket (the apps' and the bench's) gets no cookie dict, session wrapper or scope copy
    that it would keep for its whole life (docs/performance.md, "Chat delivery").
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        # The keys are set on the server's scope, not a copy: every layer's copy stays
        # referenced by its frame for as long as the socket is open.
        scope["ticket_consultation"] = None
        scope["user"], scope["auth_error"], session_key = await self._authenticate(scope)
        if session_key is None:
            return await self.inner(scope, receive, send)
        watch = _SessionWatch(session_group(session_key), receive, send)
        await watch.start()
        # A logout between the session check and the watch joining its group sent its
        # close to nobody: check the session once more now that a close would arrive.
        user, _error = await handshake_db(_session_user)(session_key)
        if user is None:
            scope["user"], scope["auth_error"] = AnonymousUser(), "no_credentials"
        try:
            return await self.inner(scope, watch.receive, send)
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
            # Redis only: the ticket carries its user (messaging.tickets).
            try:
                binding = await tickets.aticket_take(raw=ticket)
            except ServiceUnavailable:  # Redis down: not the client's fault.
                logger.warning("websocket ticket could not be checked: store unavailable")
                return AnonymousUser(), "unavailable", None
            except Exception:
                logger.exception("websocket ticket could not be checked")
                return AnonymousUser(), "unavailable", None
            if binding is None:
                return AnonymousUser(), "bad_ticket", None
            scope["ticket_consultation"] = binding.get("consultation_id")
            return binding["user"], None, None
        session_key = _session_cookie(scope)
        if session_key:
            if not origin_allowed(scope):
                return AnonymousUser(), "origin_not_allowed", None
            try:
                user, error = await handshake_db(_session_user)(session_key)
            except Exception:
                logger.exception("websocket session could not be checked")
                return AnonymousUser(), "unavailable", None
            if user is None:
                return AnonymousUser(), error, None
            return user, None, session_key
        return AnonymousUser(), "no_credentials", None


def _session_cookie(scope: dict) -> str | None:
    """The session cookie's value, parsed only for sockets without a ticket."""
    header = _header(scope, b"cookie")
    if not header:
        return None
    return parse_cookie(header).get(settings.SESSION_COOKIE_NAME) or None
