"""The consultation chat websocket, ``/ws/consultations/{id}/`` (docs/api.md, "Websocket").

The ASGI middleware (messaging.middleware) has authenticated the socket; this consumer
authorizes it (``consultation_get_for_user``: participants and the clinic's staff) before
joining any group, replays what the client missed after ``?after=``, then streams. Every
inbound event is authorized again (the consultation may have closed, access may be gone)
and goes through the same services as the REST API. Close codes: 4401 bad or missing
credentials (also after revocation), 4403 not allowed here, 4400 bad query, 1013 a
dependency is down (try again), 4408 the socket fell behind and events meant for it were
dropped (after a ``resync`` event naming the last message id it delivered). On any
other close a client reconnects with ``?after=<last id it saw>``: the database is the
truth, the socket only the fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import re
import time
import uuid
from collections import OrderedDict, deque
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

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
from messaging import events, permissions, presence, selectors, services
from messaging.audit import audit_chat_read, audit_message_created
from messaging.scope import ScopeRequest
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
# Message ids this socket has delivered, to drop the channel-layer copy of a message the
# socket already sent (its own acknowledgement, or one replayed while it was in flight).
RECENT_IDS = 4096
# The HTTP middleware's rule for a client-given request id (medease.middleware).
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,128}$")


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


def _off_thread(func):
    # Redis calls (presence) run in the thread pool, not the single database thread.
    return sync_to_async(func, thread_sensitive=False)


# --- Work done in the database thread ------------------------------------------------------


def _authorize(user, consultation_id: int):
    return selectors.chat_access(user_id=user.pk, consultation_id=consultation_id)


@_db
def _open_chat(request, consultation_id: int):
    """The consultation, if the user may see it; the socket's one audit event is written
    before any message reaches it (it covers the replay and everything streamed live)."""
    consultation = consultation_get_for_user(user=request.user, consultation_id=consultation_id)
    audit_chat_read(request=request, consultation=consultation)
    return consultation


@_db
def _recheck(user, consultation_id: int):
    return _authorize(user, consultation_id)[1]


@_db
def _send(request, consultation_id: int, body, client_id, attachment_ids=()) -> dict:
    user, consultation = _authorize(request.user, consultation_id)
    # The per-user send budget shared with the REST send, across nodes.
    ratelimit.hit(request, name="message_user", key=ratelimit.by_user)
    message, created = services.message_send(
        consultation=consultation,
        sender=user,
        body=body,
        client_id=client_id,
        attachment_ids=attachment_ids,
    )
    if created:
        audit_message_created(request=request, consultation=consultation, message=message)
    # Metadata only, no signed URLs (docs/api.md): also for a repeated client_id.
    attachments = attachment_selectors.attachments_of_messages(
        consultation_id=consultation.pk, message_ids=[message.pk]
    )
    return message_payload(message, attachments.get(message.pk, ()))


@_db
def _read(user, consultation_id: int, message_id: int) -> None:
    user, consultation = _authorize(user, consultation_id)
    services.read_marker_advance(consultation=consultation, user=user, message_id=message_id)


@_db
def _call_signal_check(user, consultation_id: int, recipient_id: int) -> None:
    call_selectors.call_signal_check(
        sender_id=user.pk, recipient_id=recipient_id, consultation_id=consultation_id
    )


@_db
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


class _RecentIds:
    """A bounded set of the most recently added ids."""

    def __init__(self, size: int) -> None:
        self._ids: OrderedDict[int, None] = OrderedDict()
        self._size = size

    def add(self, value: int) -> bool:
        """Add; False when it was already there."""
        if value in self._ids:
            return False
        self._ids[value] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


def _parse_id(value, *, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, str) and value.isdigit()):
            raise InvalidInput(f"{name} must be a message id.", fields={name: ["Invalid."]})
        value = int(value)
    if not minimum <= value <= MAX_ID:
        raise InvalidInput(f"{name} must be a message id.", fields={name: ["Invalid."]})
    return value


class ConsultationChatConsumer(AsyncWebsocketConsumer):
    """One socket of one user in one consultation's chat."""

    # --- Lifecycle ----------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        try:
            return await super().__call__(scope, receive, send)
        except Exception as exc:
            # The consumer's loop died, most often because the channel layer's receive lost
            # Redis. Without this the server logs a traceback, closes with 1011 and skips
            # disconnect(). Instead: clean up, and close with 1013 so the client reconnects
            # (with ?after=) once the layer is back; nothing it missed is lost, only late.
            if _is_transport_error(exc):
                logger.warning("chat socket lost the channel layer (%r): closing 1013", exc)
                code = CLOSE_TRY_AGAIN
            else:
                logger.exception("chat consumer failed")
                code = CLOSE_SERVER_ERROR
            with contextlib.suppress(Exception):
                await self.base_send({"type": "websocket.close", "code": code})
            with contextlib.suppress(Exception):
                await self.disconnect(code)

    async def connect(self):
        self.user = self.scope.get("user") or AnonymousUser()
        self.consultation_id = int(self.scope["url_route"]["kwargs"]["consultation_id"])
        self.consultation = None
        self.joined_groups: list[str] = []
        self.present = False
        self.heartbeat_task: asyncio.Task | None = None
        self.delivered = _RecentIds(RECENT_IDS)
        # The highest message id this socket has delivered (or the client's ?after=): what
        # a client that fell behind replays after.
        self.last_id: int | None = None
        self.fell_behind = False
        self.inbound: deque[float] = deque()
        self.last_typing = float("-inf")
        self.request = ScopeRequest(self.scope, self.user)
        # This socket's audit events share one id, as an HTTP request's do.
        self.request.request_id = _connection_id(self.scope)

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
            self.consultation = await _open_chat(self.request, self.consultation_id)
        except NotFound:
            return await self._refuse(CLOSE_FORBIDDEN)

        # Groups are joined only now, after the permission check: the consultation's
        # events, and the user's own group through which revocation closes this socket.
        try:
            for group in (
                events.consultation_group(self.consultation_id),
                events.user_group(self.user.pk),
            ):
                await self.channel_layer.group_add(group, self.channel_name)
                self.joined_groups.append(group)
        except Exception as exc:  # Channel layer down: no live path, ask to retry later.
            logger.warning("websocket refused, channel layer unavailable: %r", exc)
            await self._leave_groups()
            return await self._refuse(CLOSE_TRY_AGAIN)

        await self.accept()
        await self._presence_join()
        self.last_id = after
        if after is not None:
            # Joined before reading: whatever commits from here on also arrives live (and
            # is de-duplicated), whatever committed before is in the replay.
            await self._replay(after)

    async def disconnect(self, code):
        if getattr(self, "heartbeat_task", None) is not None:
            self.heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.heartbeat_task
            self.heartbeat_task = None
        if getattr(self, "present", False):
            try:
                last = await _off_thread(presence.backend().leave)(
                    consultation_id=self.consultation_id,
                    user_id=self.user.pk,
                    connection=self.channel_name,
                )
            except Exception as exc:  # Redis down: the entry expires on its own.
                logger.warning("presence leave failed: %r", exc)
                last = False
            self.present = False
            if last:
                await self._broadcast(events.presence_event(user_id=self.user.pk, online=False))
        await self._leave_groups()

    async def _refuse(self, code: int) -> None:
        # Accept first: a close before the handshake completes reaches browsers as a failed
        # HTTP upgrade without the code, and the contract promises the code.
        await self.accept()
        await self.close(code=code)

    async def _leave_groups(self) -> None:
        for group in getattr(self, "joined_groups", []):
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:  # group membership expires on its own
                logger.warning("group_discard %s failed: %r", group, exc)
        self.joined_groups = []

    def _after_param(self) -> int | None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        values = query.get("after")
        if not values or values[0] == "":
            return None
        return _parse_id(values[0], name="after", minimum=0)

    # --- Replay and presence ---------------------------------------------------------

    async def _replay(self, after: int) -> None:
        cursor = after
        while True:
            payloads, more = await _replay_batch(self.consultation_id, cursor)
            for payload in payloads:
                await self._deliver(payload)
            if not more or not payloads:
                break
            cursor = payloads[-1]["id"]

    async def _presence_join(self) -> None:
        try:
            first = await _off_thread(presence.backend().join)(
                consultation_id=self.consultation_id,
                user_id=self.user.pk,
                connection=self.channel_name,
            )
            self.present = True
            if first:
                await self._broadcast(events.presence_event(user_id=self.user.pk, online=True))
            online = await _off_thread(presence.backend().online_users)(
                consultation_id=self.consultation_id
            )
            for user_id in sorted(online - {self.user.pk}):
                await self._send_json({"type": "presence", "user": user_id, "online": True})
        except Exception as exc:  # Presence is advisory; the heartbeat tries again.
            logger.warning("presence join failed: %r", exc)
        self.heartbeat_task = asyncio.ensure_future(self._heartbeat())

    async def _heartbeat(self) -> None:
        interval = max(1.0, settings.MESSAGING_PRESENCE_TTL_SECONDS / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                back, gone = await _off_thread(presence.backend().heartbeat)(
                    consultation_id=self.consultation_id,
                    user_id=self.user.pk,
                    connection=self.channel_name,
                )
            except Exception as exc:
                logger.warning("presence heartbeat failed: %r", exc)
                continue
            self.present = True
            if back:
                await self._broadcast(events.presence_event(user_id=self.user.pk, online=True))
            for user_id in gone:  # their node died without saying goodbye
                await self._broadcast(events.presence_event(user_id=user_id, online=False))

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
        while self.inbound and self.inbound[0] <= now - window:
            self.inbound.popleft()
        if len(self.inbound) >= settings.MESSAGING_WS_RATE_EVENTS:
            # Whole seconds, at least 1, like the REST API's Retry-After.
            return max(1, math.ceil(self.inbound[0] + window - now))
        self.inbound.append(now)
        return None

    async def _on_send(self, event: dict) -> None:
        client_id = event.get("client_id")
        # The REST send's input rules (types, lengths, no lone surrogates), so a body REST
        # refuses with a 400 is an "invalid" event here, not a database encoding error.
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
        try:
            payload = await _send(
                self.request,
                self.consultation_id,
                data.validated_data["body"],
                data.validated_data["client_id"],
                data.validated_data["attachments"],
            )
        except NotFound:
            raise
        except RateLimited as exc:
            return await self._error(
                exc.code, exc.message, retry_after=exc.retry_after, client_id=client_id
            )
        except ApplicationError as exc:
            return await self._error(
                exc.code, exc.message, fields=exc.fields or None, client_id=client_id
            )
        # The acknowledgement: the stored message, sent straight back (also for a repeated
        # client_id, and when the channel layer is down); the fan-out copy is dropped.
        await self._deliver(payload, acknowledgement=True)

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
        await self._broadcast(events.typing_event(user_id=self.user.pk))

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
                sender_id=self.user.pk,
                recipient_id=recipient,
                data=data,
            ),
        )

    # --- Events from the channel layer -----------------------------------------------

    async def chat_message(self, event):
        await self._deliver(event["message"])

    async def chat_typing(self, event):
        if event["user"] != self.user.pk:
            await self._send_json({"type": "typing", "user": event["user"]})

    async def chat_read(self, event):
        await self._send_json(
            {"type": "read", "user": event["user"], "message_id": event["message_id"]}
        )

    async def chat_presence(self, event):
        if event["user"] != self.user.pk:
            await self._send_json(
                {"type": "presence", "user": event["user"], "online": event["online"]}
            )

    async def call_signal(self, event):
        # Fanned out to the consultation's group: only the recipient's sockets write it.
        if event["to"] == self.user.pk:
            await self._send_json(
                {"type": "call.signal", "from": event["from"], "data": event["data"]}
            )

    async def call_state(self, event):
        await self._send_json({"type": "call.state", "call": event["call"]})

    async def session_revoked(self, event):
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def chat_overflow(self, event):
        # The channel layer dropped events meant for this socket (it did not keep up):
        # say from where to replay, and close so that the client does (docs/api.md).
        if self.fell_behind:
            return
        self.fell_behind = True
        logger.warning("chat socket fell behind: closing 4408 after id %s", self.last_id)
        await self._send_json({"type": "resync", "after": self.last_id})
        await self.close(code=CLOSE_FELL_BEHIND)

    # --- Output ----------------------------------------------------------------------

    async def _deliver(self, payload: dict, *, acknowledgement: bool = False) -> None:
        if self.fell_behind:
            return  # closing: whatever is still queued comes back in the client's replay
        if self.delivered.add(payload["id"]) or acknowledgement:
            await self._send_json({"type": "message", "message": payload})
            if not acknowledgement and (self.last_id is None or payload["id"] > self.last_id):
                self.last_id = payload["id"]

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
            await self.send(text_data=json.dumps(data, separators=(",", ":")))
        except Exception as exc:  # the client went away mid-send; disconnect() follows
            logger.debug("websocket send failed: %r", exc)
