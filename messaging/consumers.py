"""The consultation chat websocket, ``/ws/consultations/{id}/`` (docs/api.md, "Websocket").

The ASGI middleware (messaging.middleware) has authenticated the socket; this consumer
authorizes it (``consultation_get_for_user``: participants and the clinic's staff) before
joining any group, replays what the client missed after ``?after=``, then streams. Every
inbound event is authorized again (the consultation may have closed, access may be gone)
and goes through the same services as the REST API. Close codes: 4401 bad or missing
credentials (also after revocation), 4403 not allowed here, 4400 bad query, 1013 a
dependency is down (try again; after a ``resync`` event when the live path broke), 4408
events meant for the socket may be lost (it did not keep up, or the process's pub/sub
subscription broke) and the client must replay (after a ``resync`` event naming the last
message id it delivered). On any other close a client reconnects with ``?after=<last id
it saw>``: the database is the truth, the socket only the fast path.

Live events come from the process's hub (messaging.hub), written to the socket without a
per-socket channel-layer message, dispatch or encode (docs/adr/0005-chat-transport.md).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import functools
import json
import logging
import math
import re
import threading
import time
import uuid
from array import array
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

from asgiref.sync import SyncToAsync
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import connections, router

from attachments import selectors as attachment_selectors
from consultations.selectors import consultation_get_for_user
from medease import db as db_routing
from medease import ratelimit
from medease.exceptions import (
    ApplicationError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    field_errors,
)
from medease.parsers import MAX_DEPTH, nested_deeper_than
from messaging import events, hub, lanes, permissions, presence, selectors, services
from messaging.api import plain_send_input
from messaging.audit import audit_chat_read, audit_message_created, message_created_origin
from messaging.middleware import handshake_db
from messaging.models import Message
from messaging.scope import ScopeRequest, keep_client_address_headers
from messaging.serializers import MAX_ID, MessageSendInput, message_payload
from visits import events as call_events
from visits import selectors as call_selectors

logger = logging.getLogger("medease.messaging")

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN = 1013
CLOSE_FELL_BEHIND = 4408
CLOSE_SERVER_ERROR = 1011
REPLAY_BATCH = 200
# What a socket whose client does not read may have waiting beyond the transport's own
# buffer before it falls behind (resync and 4408): a burst for a healthy client fits.
BACKLOG_FRAMES = 256
BACKLOG_BYTES = 512 * 1024
# The HTTP middleware's rule for a client-given request id (medease.middleware).
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,128}$")
# Threads for websocket sends on PostgreSQL that take the full path (see _send_lane), as
# many as the event loop's lanes (messaging.lanes); each keeps one pool connection.
SEND_LANES = lanes.SEND_LANES
# How long a sender's acknowledgement waits for the message's own fan-out copy (which
# comes after every message of the consultation published before it; see _on_send).
ACK_WAIT_SECONDS = 1.0


def _db(func):
    """Run ``func`` in the database thread, reading the primary.

    Chat decisions (may this user still send here? what came after id N?) must not be
    made on a replica that lags behind the write that prompted them.
    """

    @functools.wraps(func)
    def on_primary(*args, **kwargs):
        with db_routing.use_primary():
            return func(*args, **kwargs)

    return database_sync_to_async(on_primary)


# --- Work done in the database thread ------------------------------------------------------


def _authorize(user, consultation_id: int):
    return selectors.chat_access(user_id=user.pk, consultation_id=consultation_id)


# The handshake's reads (the access check and its audit event, the replay) run on the
# handshake pool (messaging.middleware), not channels' one database thread: a reconnect
# storm's handshakes overlap instead of queueing behind every other socket's work.
@handshake_db
def _open_chat(request, consultation_id: int):
    """The consultation, if the user may see it; the socket's one audit event is written
    before any message reaches it (it covers the replay and everything streamed live)."""
    consultation = consultation_get_for_user(user=request.user, consultation_id=consultation_id)
    audit_chat_read(request=request, consultation=consultation)
    return consultation


@_db
def _recheck(user, consultation_id: int):
    return _authorize(user, consultation_id)[1]


def _send(request, consultation_id: int, body, client_id, attachment_ids=(), counted=False):
    """Store one message sent over the socket: ``(payload, created)``.

    The REST send's path (docs/performance.md, "Chat delivery"), for a send the one
    statement on the event loop did not store (ConsultationChatConsumer._store): the shared
    rate limit (unless ``counted`` already), the access check as one plain statement (the
    user as they are now, like chat_access), the plain-SQL store with its create event in
    the same transaction, fan-out on commit. It gives every refusal its answer.
    """
    with db_routing.use_primary():
        if not counted:
            # The per-user send budget shared with the REST send, across nodes.
            ratelimit.hit(request, name="message_user", key=ratelimit.by_user)
        consultation = selectors.chat_access_columns(
            user_id=request.user.pk, consultation_id=consultation_id
        )
        message, created = services.message_send(
            consultation=consultation,
            sender=request.user,
            body=body,
            client_id=client_id,
            attachment_ids=attachment_ids,
            on_stored=lambda stored: audit_message_created(
                request=request, consultation=consultation, message=stored
            ),
        )
        if created and not attachment_ids:  # a new message without attachments has none
            return message_payload(message, ()), True
        # Metadata only, no signed URLs (docs/api.md): also for a repeated client_id.
        attachments = attachment_selectors.attachments_of_messages(
            consultation_id=consultation.pk, message_ids=[message.pk]
        )
        return message_payload(message, attachments.get(message.pk, ())), created


def _send_on_lane(*args):
    try:
        return _send(*args)
    finally:
        # A lane keeps its connection from send to send: the pool checkout and Django's
        # connection set-up were a fifth of a send's CPU, and there are SEND_LANES lanes
        # (a fixed few connections per process, unlike a thread per request). One that
        # broke or was left mid-transaction is closed; the next send opens another.
        for connection in connections.all(initialized_only=True):
            _close_if_unusable(connection)


def _close_if_unusable(connection) -> None:
    if connection.connection is None:
        return
    if connection.in_atomic_block or connection.get_autocommit() is not True:
        connection.close()
    elif connection.errors_occurred:
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            connection.close()


def close_lane_connections() -> None:
    """Close the connections sends keep (the threads' here, each on its own thread, and
    the event loop's lanes): for a test database about to be flushed or dropped, or a
    process shutting down."""
    for executor, context in _lane_threads:
        executor.submit(context.run, connections.close_all).result(timeout=30)
    lanes.close_all()


_send_on_database_thread = database_sync_to_async(_send)
_lanes: list[SyncToAsync] | None = None
_lane_threads: list[tuple[ThreadPoolExecutor, contextvars.Context]] = []
_lanes_lock = threading.Lock()


def _send_lane(consultation_id: int) -> SyncToAsync:
    """Where a consultation's websocket sends that take the full path run in this process
    (the usual send is one statement on the event loop instead: messaging.lanes).

    Not on channels' one database thread, which every socket of the process shares (one
    send at a time, each waiting on its ~10 round trips): on PostgreSQL a consultation's
    sends go to one of SEND_LANES single-thread executors, chosen by its id. Sends of
    different consultations overlap; those of one consultation still run one at a time in
    arrival order, each fanned out (published on commit) before the next starts, as on
    the database thread. A lane keeps one connection (_send_on_lane), never a transaction
    or atomic state, between sends. SQLite (the embedded default) stays on the database
    thread: its in-memory test database answers concurrent writers from several threads
    with "table is locked".
    """
    global _lanes
    if _lanes is None:
        with _lanes_lock:
            if _lanes is None:
                engine = settings.DATABASES[router.db_for_write(Message)]["ENGINE"]
                # Each lane runs in a context of its own, not a copy of the sending
                # socket's: Django's connections are per context, so the lane's one
                # connection is kept from send to send and no socket gets a connection
                # object of its own (nor pays for the copy and its restoring).
                _lane_threads[:] = [
                    (
                        ThreadPoolExecutor(1, thread_name_prefix=f"chat-send-{n}"),
                        contextvars.Context(),
                    )
                    for n in range(SEND_LANES if engine.endswith("postgresql") else 0)
                ]
                _lanes = [
                    SyncToAsync(
                        _send_on_lane, thread_sensitive=False, executor=executor, context=context
                    )
                    for executor, context in _lane_threads
                ]
    if not _lanes:
        return _send_on_database_thread
    return _lanes[consultation_id % len(_lanes)]


@_db
def _read(user, consultation_id: int, message_id: int) -> None:
    user, consultation = _authorize(user, consultation_id)
    services.read_marker_advance(consultation=consultation, user=user, message_id=message_id)


@_db
def _call_signal_check(user, consultation_id: int, recipient_id: int) -> None:
    call_selectors.call_signal_check(
        sender_id=user.pk, recipient_id=recipient_id, consultation_id=consultation_id
    )


@handshake_db
def _replay_batch(consultation_id: int, after: int) -> tuple[list[dict], bool]:
    page, more = selectors.messages_page(
        consultation_id=consultation_id, limit=REPLAY_BATCH, after=after
    )
    attachments = attachment_selectors.attachments_of_messages(
        consultation_id=consultation_id, message_ids=[message.pk for message in page]
    )
    return [message_payload(message, attachments.get(message.pk, ())) for message in page], more


def _connection_id(scope) -> str:
    """The handshake's sane ``X-Request-ID`` (a proxy's), else a fresh one."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"x-request-id":
            incoming = value.decode("latin-1")
            if _REQUEST_ID_RE.match(incoming):
                return incoming
    return uuid.uuid4().hex


def _is_transport_error(exc: BaseException) -> bool:
    """A lost connection (Redis, sockets), as opposed to a bug."""
    return isinstance(exc, (ConnectionError, OSError, TimeoutError)) or type(
        exc
    ).__module__.startswith("redis")


def _parse_id(value, *, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, str) and value.isdigit()):
            raise InvalidInput(f"{name} must be a message id.", fields={name: ["Invalid."]})
        value = int(value)
    if not minimum <= value <= MAX_ID:
        raise InvalidInput(f"{name} must be a message id.", fields={name: ["Invalid."]})
    return value


class ConsultationChatConsumer(AsyncWebsocketConsumer):
    """One socket of one user in one consultation's chat.

    Live events reach it through the process's hub (messaging.hub), not the channel layer:
    the hub calls :meth:`hub_push` with a frame already encoded for every socket, and the
    socket writes it to its transport directly. The consumer has no channel-layer channel.
    """

    # Per-socket state that an idle socket never changes is a class default until a socket
    # sets its own: the instance holds only what it set (memory per idle socket).
    channel_layer = None
    # No channel-layer groups (the hub carries the events): no empty list per socket.
    groups = ()
    hub: hub.Hub | None = None
    present = False
    # The highest message id this socket has delivered (or the client's ?after=): what a
    # client that fell behind replays after.
    last_id: int | None = None
    fell_behind = False
    # Live messages held back while a replay or this socket's own send is under way (then
    # released without what the replay or the acknowledgement already sent).
    held: list | None = None
    # (message id, future) while this socket's acknowledgement waits for that message's
    # fan-out copy.
    awaiting: tuple[int, asyncio.Future] | None = None
    # Frames waiting for a transport above its high-water mark (see _write).
    backlog: deque | None = None
    backlog_bytes = 0
    drain: asyncio.Future | None = None
    # The times of the socket's recent inbound events (see _take_inbound_budget).
    inbound: array | None = None
    last_typing = float("-inf")

    # --- Lifecycle ----------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        # Channels' loop, without what the hub made unnecessary: no channel-layer channel
        # (and its receive task) per socket, no close_old_connections hop per frame (the
        # database work runs in database_sync_to_async, which does that itself).
        self.scope = scope
        self.base_send = send
        try:
            while True:
                # No local keeps the last event or its handler while the socket waits.
                await self._dispatch(await receive())
        except StopConsumer:
            pass
        except Exception as exc:
            # A lost dependency (Redis, sockets) closes with 1013 so the client reconnects
            # (with ?after=) once it is back; nothing it missed is lost, only late. Without
            # this the server logs a traceback, closes with 1011 and skips disconnect().
            if _is_transport_error(exc):
                logger.warning("chat socket lost a dependency (%r): closing 1013", exc)
                code = CLOSE_TRY_AGAIN
            else:
                logger.exception("chat consumer failed")
                code = CLOSE_SERVER_ERROR
            with contextlib.suppress(Exception):
                await self.base_send({"type": "websocket.close", "code": code})
            with contextlib.suppress(Exception):
                await self.disconnect(code)

    async def _dispatch(self, message: dict) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self):
        self.user = self.scope.get("user") or AnonymousUser()
        self.user_id = self.user.pk
        self.consultation_id = int(self.scope["url_route"]["kwargs"]["consultation_id"])
        # This socket's audit events share one id, as an HTTP request's do.
        self.request_id = _connection_id(self.scope)
        keep_client_address_headers(self.scope)  # the handshake's are read by now

        auth_error = self.scope.get("auth_error")
        if auth_error == "unavailable":
            return await self._refuse(CLOSE_TRY_AGAIN)
        if not self.user.is_authenticated:
            code = CLOSE_FORBIDDEN if auth_error == "origin_not_allowed" else CLOSE_UNAUTHENTICATED
            return await self._refuse(code)
        bound = self.scope.get("ticket_consultation")
        if bound is not None and bound != self.consultation_id:
            # A ticket bound to another consultation (a join link's visit): not this one.
            return await self._refuse(CLOSE_FORBIDDEN)
        try:
            after = self._after_param()
        except InvalidInput:
            return await self._refuse(CLOSE_BAD_REQUEST)
        try:
            # Checked and audited; not kept (a socket holds ids, not model instances).
            consultation = await _open_chat(self._request(), self.consultation_id)
        except NotFound:
            return await self._refuse(CLOSE_FORBIDDEN)
        # The other participant: whom this socket's sends must find online to be stored in
        # one statement (services.message_send_at_once checks it is still them).
        self.peer_id = (
            consultation.provider_id
            if self.user_id == consultation.patient_id
            else consultation.patient_id
        )

        # Subscribed only now, after the permission check: the consultation's events, and
        # the user's own through which revocation closes this socket. join() returns once
        # Redis confirmed the subscription, so nothing committed from here on is missed.
        if after is not None:
            self.last_id = after
            self.held = []
        self.hub = hub.current()
        try:
            for group in self._groups():
                await self.hub.join(group, self)
        except Exception as exc:  # Redis down: no live path, ask to retry later.
            logger.warning("websocket refused, chat hub unavailable: %r", exc)
            self._leave_hub()
            return await self._refuse(CLOSE_TRY_AGAIN)

        await self.accept()
        await self._presence_join()
        if after is not None:
            # Subscribed before reading: whatever commits from here on is held and sent
            # after the replay (without what the replay had), whatever committed before is
            # in the replay.
            await self._replay(after)

    async def disconnect(self, code):
        if getattr(self, "present", False):
            self.present = False
            self.hub.presence.leave(self.consultation_id, self.user_id)
        self._leave_hub()

    def _groups(self) -> tuple[str, str]:
        return events.consultation_group(self.consultation_id), events.user_group(self.user_id)

    def _leave_hub(self) -> None:
        if getattr(self, "hub", None) is not None:
            for group in self._groups():
                self.hub.leave(group, self)

    def _request(self) -> ScopeRequest:
        # Built when needed (audit, rate limits), not kept per socket.
        request = ScopeRequest(self.scope, self.user)
        request.request_id = self.request_id
        return request

    async def _refuse(self, code: int) -> None:
        # Accept first: a close before the handshake completes reaches browsers as a failed
        # HTTP upgrade without the code, and the contract promises the code.
        await self.accept()
        await self.close(code=code)

    def _after_param(self) -> int | None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        values = query.get("after")
        if not values or values[0] == "":
            return None
        return _parse_id(values[0], name="after", minimum=0)

    # --- Replay and presence ---------------------------------------------------------

    async def _replay(self, after: int) -> None:
        cursor = after
        try:
            while True:
                payloads, more = await _replay_batch(self.consultation_id, cursor)
                for payload in payloads:
                    await self._deliver(payload)
                if payloads:
                    cursor = payloads[-1]["id"]
                if not more or not payloads:
                    break
        finally:
            # Sends in a consultation commit in id order, so a held message at or below
            # the replay's last id was in the replay.
            self._release(skip=lambda ident: ident <= cursor)

    async def _presence_join(self) -> None:
        try:
            first = await self.hub.presence.join(self.consultation_id, self.user_id)
            self.present = True
            if first:
                await self._broadcast(events.presence_event(user_id=self.user_id, online=True))
            online = await presence.aonline_users(consultation_id=self.consultation_id)
            for user_id in sorted(online - {self.user_id}):
                await self._send_json({"type": "presence", "user": user_id, "online": True})
        except Exception as exc:  # Presence is advisory.
            logger.warning("presence join failed: %r", exc)

    # --- Inbound events --------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            return await self._error("invalid", "Send JSON text frames.")
        limit = settings.MESSAGING_WS_MAX_FRAME_BYTES
        if len(text_data) > limit or len(text_data.encode("utf-8")) > limit:
            return await self._error("too_large", f"Frames are limited to {limit} bytes.")
        retry_after = self._take_inbound_budget()
        if retry_after is not None:
            return await self._error(
                "rate_limited", "Too many events; slow down.", retry_after=retry_after
            )
        try:
            event = json.loads(text_data)
        except (ValueError, RecursionError):  # deep nesting exhausts the decoder's stack
            return await self._error("invalid", "Frames must be JSON objects.")
        if nested_deeper_than(event, MAX_DEPTH):
            return await self._error("invalid", f"JSON nested deeper than {MAX_DEPTH} levels.")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return await self._error("invalid", 'Frames must be JSON objects with a "type".')
        handler = {
            "message.send": self._on_send,
            "typing": self._on_typing,
            "read": self._on_read,
            "call.signal": self._on_call_signal,
        }.get(event["type"])
        if handler is None:
            return await self._error("unknown_type", f"Unknown event type {event['type']!r}.")
        try:
            await handler(event)
        except NotFound:
            # Authorization is re-checked on every event: access is gone, so is the socket.
            await self.close(code=CLOSE_FORBIDDEN)
        except ApplicationError as exc:
            await self._error(exc.code, exc.message, fields=exc.fields or None)
        except Exception:
            logger.exception("chat event %s failed", event["type"])
            await self._error("server_error", "The event could not be processed.")

    def _take_inbound_budget(self) -> int | None:
        """Sliding window per connection; the seconds to wait when it is used up."""
        now = time.monotonic()
        window = settings.MESSAGING_WS_RATE_WINDOW_SECONDS
        inbound = self.inbound
        if inbound is None:
            # Made on the first event (an idle socket has none); 8 bytes a time, oldest
            # first, where a deque allocated a 64-slot block and a float object per time.
            inbound = self.inbound = array("d")
        expired = bisect.bisect_right(inbound, now - window)
        if expired:
            del inbound[:expired]
        if len(inbound) >= settings.MESSAGING_WS_RATE_EVENTS:
            # Whole seconds, at least 1, like the REST API's Retry-After.
            return max(1, math.ceil(inbound[0] + window - now))
        inbound.append(now)
        return None

    async def _on_send(self, event: dict) -> None:
        client_id = event.get("client_id")
        # The REST send's input rules (types, lengths, no lone surrogates), so a body REST
        # refuses with a 400 is an "invalid" event here, not a database encoding error.
        fields = plain_send_input(event)
        if fields is None:
            data = MessageSendInput(
                data={
                    "body": event.get("body"),
                    "client_id": client_id,
                    "attachments": event.get("attachments", []),
                }
            )
            if not data.is_valid():
                return await self._error(
                    "invalid",
                    "Some fields are invalid.",
                    fields=field_errors(data.errors),
                    client_id=client_id,
                )
            fields = data.validated_data
        self.held = [] if self.held is None else self.held
        try:
            payload, created = await self._store(fields)
        except RateLimited as exc:
            self._release()
            return await self._error(
                exc.code, exc.message, retry_after=exc.retry_after, client_id=client_id
            )
        except NotFound:
            self._release()
            raise  # access is gone: receive() closes the socket (4403), as for other events
        except ApplicationError as exc:
            self._release()
            return await self._error(
                exc.code, exc.message, fields=exc.fields or None, client_id=client_id
            )
        except BaseException:
            self._release()
            raise
        own = payload["id"]
        if created and not self.fell_behind and all(ident != own for ident, _ in self.held):
            # Publishes reach this process's hub in the order Redis took them, so once the
            # new message's own copy is here, so is every message of the consultation
            # published before it: none can come after the acknowledgement. Bounded: a
            # fan-out that failed (logged) must not hold the answer up.
            self.awaiting = (own, asyncio.get_running_loop().create_future())
            try:
                await asyncio.wait_for(self.awaiting[1], ACK_WAIT_SECONDS)
            except TimeoutError:
                logger.warning("no fan-out copy of message %s; acknowledging anyway", own)
            finally:
                self.awaiting = None
        # Earlier messages first, then the acknowledgement (the stored message, also for a
        # repeated client_id and when the fan-out failed), then later ones; the fan-out
        # copy of the message itself is dropped. Written in order behind any backlog.
        held, self.held = self.held, None
        for ident, frame in held:
            if ident < own:
                self._write(frame, ident)
        # Its id does not move the resync point: a message committed earlier on another
        # node may still be on its way.
        self._write(_frame({"type": "message", "message": payload}), 0)
        for ident, frame in held:
            if ident > own:
                self._write(frame, ident)

    async def _store(self, fields: dict) -> tuple[dict, bool]:
        """The send stored (and fanned out): ``(payload, created)``.

        Usually one statement on the event loop (messaging.lanes); attachments, an offline
        peer, a repeated client_id, a refusal and SQLite take the full path on a thread.
        """
        request = self._request()
        args = (request, self.consultation_id, fields["body"], fields["client_id"])
        if fields["attachments"] or not lanes.available():
            return await _send_lane(self.consultation_id)(*args, fields["attachments"])
        await ratelimit.ahit(request, name="message_user", key=ratelimit.by_user)
        payload = await services.amessage_send_at_once(
            sender_id=self.user_id,
            consultation_id=self.consultation_id,
            peer_id=self.peer_id,
            body=fields["body"],
            client_id=fields["client_id"],
            audit_origin=message_created_origin(request),
        )
        if payload is not None:
            return payload, True
        return await _send_lane(self.consultation_id)(*args, (), True)

    async def _on_typing(self, event: dict) -> None:
        now = time.monotonic()
        if now - self.last_typing < settings.MESSAGING_TYPING_INTERVAL_SECONDS:
            return  # throttled: typing is a hint, extras are dropped without an answer
        self.last_typing = now
        consultation = await _recheck(self.user, self.consultation_id)
        if not permissions.is_participant(user=self.user, consultation=consultation):
            raise Forbidden("Only the consultation's participants type.", code="not_participant")
        if not permissions.is_open(consultation.status):
            raise Conflict("This consultation's chat is read-only.", code="consultation_closed")
        await self._broadcast(events.typing_event(user_id=self.user_id))

    async def _on_read(self, event: dict) -> None:
        message_id = _parse_id(event.get("message_id"), name="message_id", minimum=1)
        await _read(self.user, self.consultation_id, message_id)

    async def _on_call_signal(self, event: dict) -> None:
        # WebRTC signaling (visits/): relayed as is, between two users in the call only.
        # It counts against this connection's event budget like any inbound event.
        recipient = event.get("to")
        if isinstance(recipient, bool) or not isinstance(recipient, int) or recipient < 1:
            raise InvalidInput("to must be a user id.", fields={"to": ["Invalid."]})
        data = event.get("data")
        if not isinstance(data, dict):
            raise InvalidInput("data must be an object.", fields={"data": ["Invalid."]})
        limit = settings.VISIT_SIGNAL_MAX_BYTES
        if len(json.dumps(data, separators=(",", ":")).encode("utf-8")) > limit:
            return await self._error("too_large", f"Signals are limited to {limit} bytes.")
        await _call_signal_check(self.user, self.consultation_id, recipient)
        await call_events.asend(
            self.consultation_id,
            call_events.call_signal_event(
                consultation_id=self.consultation_id,
                sender_id=self.user_id,
                recipient_id=recipient,
                data=data,
            ),
        )

    # --- Events from the hub (messaging.hub) ------------------------------------------

    def hub_push(self, kind: int, ident: int, frame: dict) -> None:
        """One published event, already encoded; called by the hub's reader, for every
        local socket in the group, so it filters and writes without awaiting."""
        if kind == hub.MESSAGE:
            if self.held is not None:
                self.held.append((ident, frame))
                awaiting = self.awaiting
                if awaiting is not None and awaiting[0] == ident and not awaiting[1].done():
                    awaiting[1].set_result(None)
            else:
                self._write(frame, ident)
        elif kind == hub.ALL:
            self._write(frame, 0)
        elif kind == hub.EXCEPT:
            if ident != self.user_id:
                self._write(frame, 0)
        elif kind == hub.ONLY:
            if ident == self.user_id:
                self._write(frame, 0)
        elif kind == hub.CONTROL and frame["text"] == "revoked":
            self._fall_behind(CLOSE_UNAUTHENTICATED, resync=False)

    def hub_lost(self, code: int) -> None:
        """The hub's subscription broke: events meant for this socket may be gone."""
        self._fall_behind(code)

    def _release(self, skip=None) -> None:
        held, self.held = self.held, None
        for ident, frame in held or ():
            if skip is None or not skip(ident):
                self._write(frame, ident)

    # --- Output ----------------------------------------------------------------------

    def _write(self, frame: dict, ident: int) -> None:
        """Hand a frame to the transport without waiting.

        The server's send returns at once unless the transport's buffer is above its
        high-water mark (the client does not read). Then the rest of that send and what
        follows wait in a bounded backlog, written in order by one task; a socket whose
        backlog overflows falls behind: it gets ``resync`` once the transport drains and
        is closed with 4408, and the client replays with ``?after=``.
        """
        if self.fell_behind:
            return
        if self.backlog is not None:
            self.backlog.append((frame, ident))
            self.backlog_bytes += len(frame["text"])
            if len(self.backlog) > BACKLOG_FRAMES or self.backlog_bytes > BACKLOG_BYTES:
                self._fall_behind(CLOSE_FELL_BEHIND)
            return
        sending = self.base_send(frame)
        try:
            waiting = sending.send(None)
        except StopIteration:
            self._sent(ident)
            return
        except Exception as exc:  # the client went away; disconnect() follows
            logger.debug("websocket send failed: %r", exc)
            return
        self._sent(ident)  # in the transport's hands once it drains
        self.backlog = deque()
        self.backlog_bytes = 0
        self.drain = asyncio.ensure_future(self._drain(sending, waiting))

    def _sent(self, ident: int) -> None:
        if ident and (self.last_id is None or ident > self.last_id):
            self.last_id = ident

    async def _drain(self, sending, waiting) -> None:
        try:
            await _finish(sending, waiting)
            while self.backlog:
                frame, ident = self.backlog.popleft()
                self.backlog_bytes -= len(frame["text"])
                self._sent(ident)
                await self.base_send(frame)
        except Exception as exc:  # the client went away; disconnect() follows
            logger.debug("websocket send failed: %r", exc)
        finally:
            self.backlog = None
            self.drain = None
        if self.fell_behind:
            await self._close_behind()

    def _fall_behind(self, code: int, *, resync: bool = True) -> None:
        if self.fell_behind:
            return
        self.fell_behind = True
        if self.awaiting is not None and not self.awaiting[1].done():
            self.awaiting[1].set_result(None)  # nothing more is written: stop waiting
        self.close_code = code
        self.send_resync = resync
        if resync:
            logger.warning("chat socket fell behind: closing %s after id %s", code, self.last_id)
        if self.backlog is not None:
            self.backlog.clear()  # the drain task sends the resync once the transport drains
            self.backlog_bytes = 0
        else:
            self.drain = asyncio.ensure_future(self._close_behind())

    async def _close_behind(self) -> None:
        # Say from where to replay, and close so that the client does (docs/api.md).
        with contextlib.suppress(Exception):
            if self.send_resync:
                resync = _dumps({"type": "resync", "after": self.last_id})
                await self.base_send({"type": "websocket.send", "text": resync})
            await self.base_send({"type": "websocket.close", "code": self.close_code})

    async def _deliver(self, payload: dict) -> None:
        if self.fell_behind:
            return  # closing: whatever is still to come is in the client's replay
        await self._send_json({"type": "message", "message": payload})
        self._sent(payload["id"])

    async def _broadcast(self, event: dict) -> None:
        await events.agroup_send(events.consultation_group(self.consultation_id), event)

    async def _error(self, code: str, message: str, **extra) -> None:
        await self._send_json(
            {
                "type": "error",
                "code": code,
                "message": message,
                **{key: value for key, value in extra.items() if value is not None},
            }
        )

    async def _send_json(self, data: dict) -> None:
        try:
            await self.base_send({"type": "websocket.send", "text": _dumps(data)})
        except Exception as exc:  # the client went away mid-send; disconnect() follows
            logger.debug("websocket send failed: %r", exc)


def _dumps(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))


def _frame(data: dict) -> dict:
    return {"type": "websocket.send", "text": _dumps(data)}


async def _finish(coroutine, waiting) -> None:
    """Run a coroutine that was started by hand (``send(None)``) and suspended on
    ``waiting`` to its end, as a task would."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                # What a task does with a yielded future before waiting on it.
                waiting._asyncio_future_blocking = False
                await waiting
        except BaseException as exc:
            try:
                waiting = coroutine.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting = coroutine.send(None)
        except StopIteration:
            return
