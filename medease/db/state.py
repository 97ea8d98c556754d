"""Request and task state: when reads must go to the primary (pins, read-your-writes marks)."""

from __future__ import annotations

import contextlib
import logging
import threading

from django.conf import settings
from django.core.cache import caches

from medease import context
from medease.db.replicas import replica_aliases

logger = logging.getLogger("medease.db")

RECENT_WRITE_COOKIE = "medease_rw"
_RECENT_WRITE_KEY = "rw:user:{user_id}"
# The cache alias whose errors surface (the default one hides them by design): a
# read-your-writes marker we cannot read must pin to the primary, not look like "no write".
_MARKER_CACHE = "ratelimit"
# Outside a request (shell, Celery task) this flags "read the primary" for the thread.
_local = threading.local()


def _primary_forced() -> bool:
    state = context.current_state()
    if state is not None and state.use_primary:
        return True
    return getattr(_local, "depth", 0) > 0


def primary_forced() -> bool:
    """Whether reads here go to the primary (used to tag Celery tasks enqueued here)."""
    state = context.current_state()
    return _primary_forced() or (state is not None and state.wrote)


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
    if not replica_aliases():
        return
    try:
        caches[_MARKER_CACHE].set(
            _RECENT_WRITE_KEY.format(user_id=user_id),
            1,
            timeout=settings.READ_YOUR_WRITES_SECONDS,
        )
    except Exception as exc:  # Cache down: readers cannot check either, they pin anyway.
        logger.warning("read-your-writes marker not stored: %s", exc)


def marker_key_to_read(user_id: int) -> str | None:
    """The cache key (before the cache's prefix) of this user's read-your-writes marker, if
    this request still has to look at it (None: no replicas, or already on the primary).

    For callers that read it in a round trip of their own (accounts.authentication), then
    pass what they found to :func:`pin_if_marked`.
    """
    state = context.current_state()
    if state is None or state.use_primary or not replica_aliases():
        return None
    return _RECENT_WRITE_KEY.format(user_id=user_id)


def pin_if_marked(marker) -> None:
    """Pin the request to the primary if the marker read by the caller was there."""
    state = context.current_state()
    if marker and state is not None:
        state.use_primary = True


def pin_if_user_wrote_recently(user_id: int) -> None:
    """Called once the request's user is known (after authentication)."""
    key = marker_key_to_read(user_id)
    if key is None:
        return
    try:
        marker = caches[_MARKER_CACHE].get(key)
    except Exception as exc:
        # We cannot tell whether this user just wrote, so we read where the write is.
        logger.warning("read-your-writes marker unreadable, reading the primary: %s", exc)
        marker = 1
    pin_if_marked(marker)
