"""A short-lived cache of token facts in the shared cache (Redis in production).

It spares the primary one query per authenticated request. Entries live
TOKEN_CACHE_SECONDS. Revocation writes a tombstone under a key of its own, which fills and
refreshes never write: whatever they store and whenever they store it, a tombstone wins
(see docs/adr/0002-api-tokens.md). The tombstone outlives any entry written by a request
that was already in flight when the token was revoked. Every call degrades to "no entry"
when the cache is unreachable.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger("accounts.tokens")

REVOKED = "revoked"


def _key(digest: str) -> str:
    return f"tok:{digest}"


def _tombstone_key(digest: str) -> str:
    return f"tok-revoked:{digest}"


def _enabled() -> bool:
    return settings.TOKEN_CACHE_SECONDS > 0


def get(digest: str):
    """The cached facts, REVOKED, or None (miss, disabled or cache down)."""
    if not _enabled():
        return None
    try:
        # One round trip for both keys; the tombstone is looked at first.
        values = cache.get_many([_tombstone_key(digest), _key(digest)])
    except Exception as exc:  # a backend without IGNORE_EXCEPTIONS
        logger.warning("token cache unavailable: %s", exc)
        return None
    if values.get(_tombstone_key(digest)) is not None:
        return REVOKED
    return values.get(_key(digest))


def add(digest: str, facts) -> None:
    """Fill an empty entry after a read of the primary."""
    if not _enabled():
        return
    try:
        cache.add(_key(digest), facts, timeout=settings.TOKEN_CACHE_SECONDS)
    except Exception as exc:
        logger.warning("token cache fill failed: %s", exc)


def replace(digest: str, facts) -> None:
    """Refresh an entry (after last_used_at moved); a tombstone still wins over it."""
    if not _enabled():
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
        # Twice the entry lifetime: an entry written by a request in flight at revocation
        # expires before its tombstone does.
        cache.set_many(
            {_tombstone_key(digest): REVOKED for digest in digests},
            timeout=2 * settings.TOKEN_CACHE_SECONDS,
        )
        cache.delete_many([_key(digest) for digest in digests])
    except Exception as exc:
        # The primary already says revoked; entries expire within TOKEN_CACHE_SECONDS.
        logger.error("token cache tombstones not written: %s", exc)
