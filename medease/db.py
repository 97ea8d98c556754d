"""Primary/replica routing with read-your-writes.

Writes always go to the primary (``default``). Reads go to a healthy replica from
``DATABASE_REPLICA_URLS`` unless one of these holds, in which case they read the primary:

* the code is inside an atomic block (a transaction must see its own writes);
* the current request (or Celery task) has written already;
* the same user wrote within ``READ_YOUR_WRITES_SECONDS`` (a marker in the shared cache,
  or a short-lived cookie for browser sessions);
* the code asked for it with :func:`use_primary`.

A replica that failed or lags beyond ``MAX_REPLICA_LAG`` is left out for
``REPLICA_RETRY_SECONDS`` and then tried again; with no healthy replica, reads use the
primary. See docs/adr/0001-replica-routing.md.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connections

from medease import context

logger = logging.getLogger("medease.db")

PRIMARY = DEFAULT_DB_ALIAS
RECENT_WRITE_COOKIE = "medease_rw"
_RECENT_WRITE_KEY = "rw:user:{user_id}"

# Process-wide state for replicas: alias → monotonic time until which it is skipped.
_replica_skip_until: dict[str, float] = {}
_replica_lock = threading.Lock()
# Outside a request (shell, Celery task) this flags "read the primary" for the thread.
_local = threading.local()


def replica_aliases() -> list[str]:
    return [alias for alias in settings.DATABASES if alias != PRIMARY]


def healthy_replicas() -> list[str]:
    now = time.monotonic()
    return [alias for alias in replica_aliases() if _replica_skip_until.get(alias, 0) <= now]


def mark_replica_unhealthy(alias: str, *, reason: str) -> None:
    """Take a replica out of rotation for REPLICA_RETRY_SECONDS."""
    with _replica_lock:
        _replica_skip_until[alias] = time.monotonic() + settings.REPLICA_RETRY_SECONDS
    logger.warning("replica %s skipped: %s", alias, reason)


def mark_replica_healthy(alias: str) -> None:
    with _replica_lock:
        _replica_skip_until.pop(alias, None)


def _primary_forced() -> bool:
    state = context.current_state()
    if state is not None and state.use_primary:
        return True
    return getattr(_local, "depth", 0) > 0


def note_write() -> None:
    """Record that the current request wrote: its later reads go to the primary."""
    state = context.current_state()
    if state is not None:
        state.wrote = True
        state.use_primary = True


@contextlib.contextmanager
def use_primary():
    """Read from the primary inside this block (Celery tasks, read-after-write code paths)."""
    state = context.current_state()
    if state is not None:
        previous = state.use_primary
        state.use_primary = True
        try:
            yield
        finally:
            state.use_primary = previous or state.wrote
    else:
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            yield
        finally:
            _local.depth -= 1


def remember_recent_write(user_id: int) -> None:
    """Send this user's reads to the primary for READ_YOUR_WRITES_SECONDS (all nodes)."""
    if replica_aliases():
        cache.set(
            _RECENT_WRITE_KEY.format(user_id=user_id),
            1,
            timeout=settings.READ_YOUR_WRITES_SECONDS,
        )


def pin_if_user_wrote_recently(user_id: int) -> None:
    """Called once the request's user is known (after authentication)."""
    state = context.current_state()
    if state is None or state.use_primary or not replica_aliases():
        return
    # The default cache ignores Redis errors and answers None: then we read the replica,
    # which is at most MAX_REPLICA_LAG behind.
    if cache.get(_RECENT_WRITE_KEY.format(user_id=user_id)):
        state.use_primary = True


class PrimaryReplicaRouter:
    """Django database router implementing the policy in this module's docstring."""

    def db_for_read(self, model, **hints):
        if not replica_aliases():
            return PRIMARY
        if _primary_forced() or connections[PRIMARY].in_atomic_block:
            return PRIMARY
        candidates = healthy_replicas()
        if not candidates:
            return PRIMARY
        return random.choice(candidates)  # noqa: S311 - load spreading, not security

    def db_for_write(self, model, **hints):
        note_write()
        return PRIMARY

    def allow_relation(self, obj1, obj2, **hints):
        # Replicas hold the same data as the primary, so relations across aliases are fine.
        return True

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == PRIMARY


class ReadYourWritesMiddleware:
    """Pins a request to the primary when its user wrote recently, and records new writes.

    API clients are recognised by user id (after token authentication, see
    accounts.authentication); browsers also get a short-lived cookie, which covers the
    admin's post-redirect-get before the session user is loaded.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        state = context.current_state()
        if state is not None and request.COOKIES.get(RECENT_WRITE_COOKIE):
            state.use_primary = True
        response = self.get_response(request)
        if state is not None and state.wrote and replica_aliases():
            user = getattr(request, "user", None)
            if user is not None and getattr(user, "is_authenticated", False):
                remember_recent_write(user.pk)
            response.set_cookie(
                RECENT_WRITE_COOKIE,
                "1",
                max_age=int(settings.READ_YOUR_WRITES_SECONDS) or 1,
                httponly=True,
                samesite="Lax",
            )
        return response
