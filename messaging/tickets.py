"""Websocket tickets: single use, short-lived, bound to the user and token that asked.

Browsers cannot set an Authorization header on a websocket, and a bearer token in a URL
ends up in access logs. So a client asks ``POST ws-ticket`` (bearer-authenticated) for a
ticket and opens the socket with ``?ticket=``. The ticket is kept in Redis (the shared
cache) for MESSAGING_TICKET_TTL_SECONDS under its SHA-256 digest, and taken exactly once.

A ticket may be bound to one consultation: then it opens that consultation's socket only
(the consumer closes any other with 4403). The visit page's join-link session gets only
such tickets, so its one visit does not open the user's other visits' chats.

Redeeming a ticket is the websocket handshake's hot path (a reconnect storm is thousands
of them), so it reads no database: the ticket carries what the handshake needs (a snapshot
of the user as checked when it was issued, the token's expiry), and one Redis script takes
it (read and delete: exactly once) and reads the user's revocation mark. Whatever revokes
credentials (logout, password change, deactivation, a role or clinic change) writes a new
mark (``user_tickets_revoke``, an accounts revocation listener) and so refuses every ticket
issued before it; the sockets already open are closed by the chat's own listener.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import pickle
import secrets
import time
import uuid
import weakref

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from medease import db as db_routing
from medease.exceptions import ServiceUnavailable

logger = logging.getLogger("medease.messaging")

# The cache alias whose errors surface (the default one hides them): handing out a ticket
# that was never stored would only fail later, at connect, with a misleading 4401.
_CACHE_ALIAS = "ratelimit"
_KEY = "wsticket:{digest}"
_MARK = "wsticket-mark:{user_id}"
# Redis down or timing out (the circuit breaker fails fast with a ConnectionError).
_STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
_UNAVAILABLE = "Websocket tickets are unavailable for a moment. Try again shortly."

# Store: the user's current revocation mark goes into the ticket, and the mark is kept alive
# at least as long as the ticket (an expired mark would refuse a ticket that holds it).
_STORE = """
local mark = redis.call('GET', KEYS[2]) or ''
if mark ~= '' then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'mark', mark, 'user', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# Take: read and delete in one step (exactly once, whoever races), and whether the mark is
# still the one the ticket was issued under (no revocation since).
_TAKE = """
local ticket = redis.call('HMGET', KEYS[1], 'data', 'mark', 'user')
if not ticket[1] then return false end
redis.call('DEL', KEYS[1])
local mark = redis.call('GET', ARGV[1] .. ticket[3]) or ''
if mark ~= ticket[2] then return 0 end
return ticket[1]
"""


def _key(raw: str) -> str:
    return _KEY.format(digest=hashlib.sha256(raw.encode()).hexdigest())


def _mark_ttl() -> int:
    return 2 * settings.MESSAGING_TICKET_TTL_SECONDS + 60


def _is_redis(cache) -> bool:
    return not isinstance(cache, LocMemCache)


def _snapshot(user):
    """A copy of the user without the password hash (as accounts.token_cache keeps one);
    its organization, loaded with it, travels along."""
    copy = user.__class__.__new__(user.__class__)
    copy.__dict__ = {key: value for key, value in user.__dict__.items() if key != "password"}
    return copy


def _facts(*, user_id: int, token_id: int | None):
    """(the user as the ticket will carry it, until when its token is usable) from the
    primary, or (None, None) when the credentials no longer hold."""
    from messaging import selectors

    if token_id is None:
        user = selectors.ticket_user(user_id=user_id, token_id=None)
        return user, None
    from accounts.models import AuthToken

    token = (
        AuthToken.objects.using(db_routing.PRIMARY)
        .select_related("user", "user__organization")
        .filter(pk=token_id, user_id=user_id, revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None, None
    if token.created_at < token.user.credentials_changed_at:
        return None, None
    usable_until = min(
        token.expires_at, token.last_used_at + settings.TOKEN_IDLE_TIMEOUT
    ).timestamp()
    return token.user, usable_until


def ticket_store(
    *,
    user_id: int,
    token_id: int | None,
    consultation_id: int | None = None,
    user=None,
    token=None,
) -> str:
    """Create and store a ticket (for any consultation of the user when ``consultation_id``
    is None); the raw value is returned once.

    The user's facts are read here, in the issuing request, and travel with the ticket, so
    that the handshake reads no database. A caller that has just authenticated them (the
    request's ``user`` and ``token``, an AuthToken) passes them and spares that read.
    """
    usable_until = None
    if token is not None and user is not None:
        usable_until = min(
            token.expires_at, token.last_used_at + settings.TOKEN_IDLE_TIMEOUT
        ).timestamp()
    elif user is None or token_id is not None:
        user, usable_until = _facts(user_id=user_id, token_id=token_id)
    raw = secrets.token_urlsafe(32)
    binding = {
        "user_id": user_id,
        "token_id": token_id,
        "consultation_id": consultation_id,
        # Pickled apart, so that handshakes can share one instance per snapshot (_user).
        "user": None if user is None else pickle.dumps(_snapshot(user), pickle.HIGHEST_PROTOCOL),
        "usable_until": usable_until,
    }
    ttl = settings.MESSAGING_TICKET_TTL_SECONDS
    cache = caches[_CACHE_ALIAS]
    try:
        if _is_redis(cache):
            client = cache.client.get_client(write=True)
            client.eval(
                _STORE,
                2,
                cache.make_key(_key(raw)),
                cache.make_key(_MARK.format(user_id=user_id)),
                pickle.dumps(binding, pickle.HIGHEST_PROTOCOL),
                ttl,
                _mark_ttl(),
                user_id,
            )
        else:
            mark = cache.get(_MARK.format(user_id=user_id), "")
            cache.set(_key(raw), (binding, mark), timeout=ttl)
    except _STORE_ERRORS as exc:  # the client retries (503 + Retry-After), not a 500
        logger.warning("websocket ticket not stored, cache unavailable: %r", exc)
        raise ServiceUnavailable(_UNAVAILABLE) from exc
    return raw


def _checked(binding: dict | None) -> dict | None:
    """The binding if the ticket's credentials still held when it was taken."""
    if binding is None or binding.get("user") is None:
        return None
    usable_until = binding.get("usable_until")
    if usable_until is not None and usable_until <= time.time():
        return None
    return {**binding, "user": _user(binding["user"])}


def _valid_raw(raw: str) -> bool:
    return bool(raw) and len(raw) <= 128


def ticket_take(*, raw: str) -> dict | None:
    """The ticket's binding (``user_id``, ``token_id``, ``consultation_id``, ``user``) if it
    exists and its credentials were not revoked since, removing it; None when unknown,
    used, expired or revoked (ServiceUnavailable when the store is down)."""
    if not _valid_raw(raw):
        return None
    cache = caches[_CACHE_ALIAS]
    try:
        if _is_redis(cache):
            client = cache.client.get_client(write=True)
            answer = client.eval(
                _TAKE, 1, cache.make_key(_key(raw)), cache.make_key(_MARK.format(user_id=""))
            )
            return _checked(_loaded(answer))
        return _locmem_take(cache, raw)
    except _STORE_ERRORS as exc:
        raise ServiceUnavailable(_UNAVAILABLE) from exc


async def aticket_take(*, raw: str) -> dict | None:
    """:func:`ticket_take` from the event loop, without a thread (one Redis round trip)."""
    if not _valid_raw(raw):
        return None
    # Looked up in a copy of the context: Django keeps the backends it hands out per context
    # (an asgiref Local), and the socket's task would keep that storage for its whole life.
    cache = contextvars.copy_context().run(caches.__getitem__, _CACHE_ALIAS)
    if not _is_redis(cache):
        return _locmem_take(cache, raw)  # in process memory: nothing to wait for
    try:
        answer = await _async_client(cache).eval(
            _TAKE, 1, cache.make_key(_key(raw)), cache.make_key(_MARK.format(user_id=""))
        )
    except _STORE_ERRORS as exc:
        raise ServiceUnavailable(_UNAVAILABLE) from exc
    return _checked(_loaded(answer))


# Users unpickled from tickets, by the exact bytes of their snapshot: sockets of the same
# user in the same state share one read-only instance (about 2 KiB each) for as long as
# any of them is open. A change to the user revokes its tickets, so a new snapshot is
# always new bytes.
_users: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _loaded(answer) -> dict | None:
    if not answer or answer == 0:  # unknown or used (nil), or revoked since (0)
        return None
    return pickle.loads(answer)  # noqa: S301 (our own Redis, as django-redis's pickles)


def _user(snapshot: bytes):
    key = hashlib.sha256(snapshot).digest()
    user = _users.get(key)
    if user is None:
        user = pickle.loads(snapshot)  # noqa: S301
        user = _users.setdefault(key, user)
    return user


def _locmem_take(cache, raw: str) -> dict | None:
    # Take-once without a race: ``delete`` reports whether it removed the key (locmem's
    # lock), and only the caller whose delete removed it may use it.
    key = _key(raw)
    stored = cache.get(key)
    if stored is None or not cache.delete(key):
        return None
    binding, mark = stored
    if cache.get(_MARK.format(user_id=binding["user_id"]), "") != mark:
        return None
    return _checked(binding)


def user_tickets_revoke(*, user_id: int) -> None:
    """Refuse every ticket of the user issued until now (credentials revoked; an accounts
    revocation listener, called after commit)."""
    cache = caches[_CACHE_ALIAS]
    key, mark = _MARK.format(user_id=user_id), uuid.uuid4().hex
    try:
        if _is_redis(cache):
            # Raw, as the scripts read it (not through the cache's pickling).
            client = cache.client.get_client(write=True)
            client.set(cache.make_key(key), mark, ex=_mark_ttl())
        else:
            cache.set(key, mark, timeout=_mark_ttl())
    except _STORE_ERRORS as exc:
        # Tickets live MESSAGING_TICKET_TTL_SECONDS; the sockets' own close still happens.
        logger.error("websocket tickets of user %s not revoked: %r", user_id, exc)


# One async client per event loop and ticket store, on a blocking pool: a reconnect storm
# waits for a connection instead of failing.
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ASYNC_POOL = 20


def _async_client(cache) -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    clients = _async_clients.setdefault(loop, {})
    location = cache._server if isinstance(cache._server, str) else cache._server[0]
    client = clients.get(location)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            location,
            max_connections=_ASYNC_POOL,
            timeout=10,
            socket_timeout=5,
            socket_connect_timeout=2,
        )
        client = clients[location] = aioredis.Redis(connection_pool=pool)
    return client
