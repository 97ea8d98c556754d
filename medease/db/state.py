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


def pin_if_user_wrote_recently(user_id: int) -> None:
    """Called once the request's user is known (after authentication)."""
    state = context.current_state()
    if state is None or state.use_primary or not replica_aliases():
        return
    try:
        marker = caches[_MARKER_CACHE].get(_RECENT_WRITE_KEY.format(user_id=user_id))
    except Exception as exc:
        # We cannot tell whether this user just wrote, so we read where the write is.
        logger.warning("read-your-writes marker unreadable, reading the primary: %s", exc)
        marker = 1
    if marker:
        state.use_primary = True
