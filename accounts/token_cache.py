"""A short-lived cache of token facts in the shared cache (Redis in production).

It spares the primary one query per authenticated request. Entries live
TOKEN_CACHE_SECONDS. Revocation writes a tombstone under a key of its own, which fills and
refreshes never write: whatever they store and whenever they store it, a tombstone wins
(see docs/adr/0002-api-tokens.md). The tombstone outlives any entry written by a request
that was already in flight when the token was revoked. Every call degrades to "no entry"
when the cache is unreachable.

Next to the facts, a snapshot of the token's user (and organization) spares the user row's
query too. It is versioned per token: a change to the user or its organization writes a new
version (``users_changed``, after the change commits), and a snapshot counts only while the
version it was filled under is still the current one. A request that read the old row
before the commit and stores it after the new version was written therefore stores a
snapshot nobody accepts. The password hash is never cached (it is loaded on demand).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger("accounts.tokens")

REVOKED = "revoked"


def _key(digest: str) -> str:
    return f"tok:{digest}"


def _tombstone_key(digest: str) -> str:
    return f"tok-revoked:{digest}"


def _user_key(digest: str) -> str:
    return f"tok-user:{digest}"


def _user_version_key(digest: str) -> str:
    return f"tok-userv:{digest}"


@dataclass(frozen=True)
class Read:
    """One round trip's worth: the facts (or REVOKED, or None), the user snapshot if it is
    still current, and the version a fresh snapshot is to be stored under."""

    facts: object
    user: object = None
    user_version: str | None = None


def _enabled() -> bool:
    return settings.TOKEN_CACHE_SECONDS > 0


def get(digest: str):
    """The cached facts, REVOKED, or None (miss, disabled or cache down)."""
    return read(digest).facts


def read(digest: str) -> Read:
    """Facts and user snapshot in one round trip; the tombstone is looked at first."""
    if not _enabled():
        return Read(None)
    keys = [_tombstone_key(digest), _key(digest), _user_version_key(digest), _user_key(digest)]
    try:
        values = cache.get_many(keys)
    except Exception as exc:  # a backend without IGNORE_EXCEPTIONS
        logger.warning("token cache unavailable: %s", exc)
        return Read(None)
    if values.get(keys[0]) is not None:
        return Read(REVOKED)
    version = values.get(keys[2])
    snapshot = values.get(keys[3])
    user = None
    if isinstance(snapshot, tuple) and len(snapshot) == 2 and snapshot[0] == version:
        user = snapshot[1]
    return Read(values.get(keys[1]), user, version)


def user_add(digest: str, user, *, version: str | None) -> None:
    """Store a user snapshot read from the primary, under the version read before it."""
    if not _enabled():
        return
    snapshot = _without_password(user)
    try:
        cache.set(_user_key(digest), (version, snapshot), timeout=settings.TOKEN_CACHE_SECONDS)
    except Exception as exc:
        logger.warning("token user cache fill failed: %s", exc)


def _without_password(user):
    """A copy whose password is a deferred field: the hash stays out of the cache, and
    whoever needs it (a password change) loads it from the database."""
    copy = user.__class__.__new__(user.__class__)
    copy.__dict__ = {key: value for key, value in user.__dict__.items() if key != "password"}
    return copy


def users_changed(digests: list[str]) -> None:
    """Outdate the user snapshots of these tokens on every node (after the change commits)."""
    if not _enabled() or not digests:
        return
    version = uuid.uuid4().hex
    try:
        # Outlives any snapshot stored by a request in flight (as tombstones do).
        cache.set_many(
            {_user_version_key(digest): version for digest in digests},
            timeout=2 * settings.TOKEN_CACHE_SECONDS,
        )
        cache.delete_many([_user_key(digest) for digest in digests])
    except Exception as exc:
        logger.error("token user snapshots not outdated: %s", exc)


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
        cache.delete_many([_key(digest) for digest in digests] + [_user_key(d) for d in digests])
    except Exception as exc:
        # The primary already says revoked; entries expire within TOKEN_CACHE_SECONDS.
        logger.error("token cache tombstones not written: %s", exc)
