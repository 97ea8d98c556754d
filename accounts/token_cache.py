"""A short-lived cache of token facts in the shared cache (Redis in production).

It spares the primary one query per authenticated request. Entries live
TOKEN_CACHE_SECONDS; revocation replaces an entry with a tombstone for as long, and fills
use add() so that a tombstone always wins (see docs/adr/0002-api-tokens.md). Every call
degrades to "no entry" when the cache is unreachable.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger("accounts.tokens")

REVOKED = "revoked"
_MISSING = object()


def _key(digest: str) -> str:
    return f"tok:{digest}"


def _enabled() -> bool:
    return settings.TOKEN_CACHE_SECONDS > 0


def get(digest: str):
    """The cached facts, REVOKED, or None (miss, disabled or cache down)."""
    if not _enabled():
        return None
    try:
        value = cache.get(_key(digest), _MISSING)
    except Exception as exc:  # a backend without IGNORE_EXCEPTIONS
        logger.warning("token cache unavailable: %s", exc)
        return None
    if value is _MISSING or value is None:
        return None
    return REVOKED if value == REVOKED else value


def add(digest: str, facts) -> None:
    """Fill an empty entry (never over a tombstone)."""
    if not _enabled():
        return
    try:
        cache.add(_key(digest), facts, timeout=settings.TOKEN_CACHE_SECONDS)
    except Exception as exc:
        logger.warning("token cache fill failed: %s", exc)


def replace(digest: str, facts) -> None:
    """Refresh a live entry (after last_used_at moved), unless it was revoked meanwhile."""
    if not _enabled() or get(digest) is REVOKED:
        return
    try:
        cache.set(_key(digest), facts, timeout=settings.TOKEN_CACHE_SECONDS)
    except Exception as exc:
        logger.warning("token cache refresh failed: %s", exc)


def forget(digests: list[str]) -> None:
    """Tombstone revoked tokens on every node at once."""
    if not _enabled() or not digests:
        return
    try:
        cache.set_many(
            {_key(digest): REVOKED for digest in digests}, timeout=settings.TOKEN_CACHE_SECONDS
        )
    except Exception as exc:
        # The primary already says revoked; entries expire within TOKEN_CACHE_SECONDS.
        logger.error("token cache tombstones not written: %s", exc)
