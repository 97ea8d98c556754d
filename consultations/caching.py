"""Hot-read caching with explicit invalidation, which never fails a request.

Each cached value is stored under a key that embeds the current *version token* of every
scope it depends on (a provider's slots, a user's or an organization's dashboard).
Invalidation replaces the token, so every older entry becomes unreachable at once without
scanning keys. Tokens are bumped after commit (see ``invalidate_on_commit``): bumping before
commit would let a concurrent reader cache pre-commit data under the new token.

Any cache error (Redis down or timing out) is treated as a miss and the value is built from
the database; nothing is cached while the cache is unreachable.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

from django.core.cache import cache
from django.db import transaction

from medease import db as db_routing

logger = logging.getLogger("consultations.cache")

T = TypeVar("T")


def slots_scope(provider_id: int) -> str:
    return f"cons:v:slots:{provider_id}"


def providers_scope() -> str:
    """One scope for every providers list: provider changes are rare, lists are hot."""
    return "cons:v:providers"


def user_dashboard_scope(user_id: int) -> str:
    return f"cons:v:dash:user:{user_id}"


def organization_dashboard_scope(organization_id: int) -> str:
    return f"cons:v:dash:org:{organization_id}"


def _tokens(scopes: list[str]) -> list[str] | None:
    """Current version token of each scope, creating missing ones; None if the cache is down."""
    try:
        found = cache.get_many(scopes)
        for scope in scopes:
            if scope not in found:
                # add(): a concurrent invalidation that set a token first wins.
                cache.add(scope, uuid.uuid4().hex, timeout=None)
        if len(found) < len(scopes):
            found = cache.get_many(scopes)
    except Exception as exc:  # any backend error is an outage: read the database
        logger.warning("cache unavailable, reading the database: %s", exc)
        return None
    if len(found) < len(scopes):
        # The default cache swallows Redis errors and answers "nothing": same as an outage.
        return None
    return [found[scope] for scope in scopes]


def cached(*, scopes: list[str], key: str, timeout: int, build: Callable[[], T]) -> T:
    """The cached value for ``key`` under the scopes' current versions, or ``build()``.

    The entry is stored with the tokens it was built under and read in the same MGET as the
    scopes' current tokens: one round trip on a hit. It counts only if its tokens are the
    current ones, so an invalidation still hides every older entry at once (and an entry a
    slow reader stores under old tokens is a miss for everyone after it).
    """
    full_key = f"cons:c:{hashlib.sha256(key.encode()).hexdigest()}"
    try:
        found = cache.get_many([*scopes, full_key])
    except Exception as exc:  # any backend error is an outage: read the database
        logger.warning("cache unavailable, reading the database: %s", exc)
        return build()
    tokens = [found.get(scope) for scope in scopes]
    entry = found.get(full_key)
    if None not in tokens and entry is not None and entry[0] == tokens:
        return entry[1]
    if None in tokens:
        tokens = _tokens(scopes)
        if tokens is None:
            return build()
    return _fill_once(full_key, tokens, timeout, build)


class _Flight:
    """One fill of an entry in this process, which concurrent misses of it wait for."""

    __slots__ = ("lock", "result", "waiters")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.result: tuple[list[str], object] | None = None  # (tokens, a snapshot)
        self.waiters = 0


_flights: dict[str, _Flight] = {}
_flights_guard = threading.Lock()
# A waiter gives up waiting after this and builds the value itself.
FLIGHT_WAIT_SECONDS = 10.0


def _fill_once(full_key: str, tokens: list[str], timeout: int, build: Callable[[], T]) -> T:
    """Build and store the entry; concurrent misses of the same entry in this process wait
    for the first and share its value (when an entry expires under load, the requests that
    miss it at once would each build it, the costliest moment of a hot read)."""
    with _flights_guard:
        flight = _flights.setdefault(full_key, _Flight())
        flight.waiters += 1
    acquired = flight.lock.acquire(timeout=FLIGHT_WAIT_SECONDS)
    try:
        done = flight.result
        if done is not None and done[0] == tokens:
            # A copy of its own, as a cache hit gets: callers add per-request fields.
            return copy.deepcopy(done[1])
        # Fill from the primary: a replica may not have replayed the write that just
        # bumped the version, and a stale fill would be served for the entry's lifetime.
        with db_routing.use_primary():
            value = build()
        # Snapshot before the caller can change it; waiters copy the snapshot.
        flight.result = (tokens, copy.deepcopy(value))
        try:
            cache.set(full_key, (tokens, value), timeout=timeout)
        except Exception as exc:
            logger.warning("cache write failed: %s", exc)
        return value
    finally:
        if acquired:
            flight.lock.release()
        with _flights_guard:
            flight.waiters -= 1
            if flight.waiters == 0 and _flights.get(full_key) is flight:
                del _flights[full_key]


def _set_forever(values: dict[str, str]) -> None:
    """Store values without expiry in one command: django-redis's ``set_many`` sends a
    MULTI, one SET per key and an EXEC (a booking bumps four scopes: six commands); one
    MSET of the same keys and encoded values is atomic too. Other backends: ``set_many``."""
    client = getattr(cache, "client", None)
    if client is None or not hasattr(client, "get_client") or not hasattr(client, "encode"):
        cache.set_many(values, timeout=None)
        return
    client.get_client(write=True).mset(
        {client.make_key(key): client.encode(value) for key, value in values.items()}
    )


def invalidate(scopes: Iterable[str]) -> None:
    """Give each scope a new version token (entries under the old one are never read again)."""
    tokens = {scope: uuid.uuid4().hex for scope in set(scopes)}
    if not tokens:
        return
    try:
        _set_forever(tokens)
    except Exception as exc:
        # Entries expire on their own (short timeouts); log so operators see lost invalidations.
        logger.warning("cache invalidation failed for %s: %s", sorted(tokens), exc)


def invalidate_providers_on_commit() -> None:
    """Drop every cached providers list once the change that affects them commits."""
    transaction.on_commit(lambda: invalidate([providers_scope()]))


def invalidate_on_commit(
    *,
    provider_ids: Iterable[int] = (),
    user_ids: Iterable[int] = (),
    organization_ids: Iterable[int] = (),
    slots: bool = False,
) -> None:
    """Invalidate dashboards of these users/organizations (and providers' slots) after commit."""
    scopes = [user_dashboard_scope(uid) for uid in {*user_ids, *provider_ids} if uid]
    scopes += [organization_dashboard_scope(oid) for oid in set(organization_ids) if oid]
    if slots:
        scopes += [slots_scope(pid) for pid in set(provider_ids) if pid]
    transaction.on_commit(lambda: invalidate(scopes))
