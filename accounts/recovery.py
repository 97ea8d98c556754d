"""MFA recovery codes: made random, kept as a salted SHA-256, compared in constant time.

A code has 80 random bits (16 base32 characters, shown in groups of four); below the 112
bits that would need no salt, each digest gets its own random salt (ASVS 2.6.2). A fast
hash is enough for random secrets of that size, and verifying ten codes stays cheap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_GROUP = 4


def recovery_code_new() -> str:
    """A fresh code as the user sees it, e.g. ``k3pq-7m2a-x9fd-w4ce``."""
    raw = base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()
    return "-".join(raw[i : i + _GROUP] for i in range(0, len(raw), _GROUP))


def recovery_code_normalize(code: str) -> str:
    """What was typed, without spaces, dashes or case."""
    return "".join(ch for ch in code.lower() if ch.isalnum())


def _hash(salt: str, code: str) -> str:
    return hashlib.sha256(f"{salt}:{recovery_code_normalize(code)}".encode()).hexdigest()


def recovery_code_digest(code: str) -> str:
    """``salt$sha256`` of a code, what is stored."""
    salt = secrets.token_hex(16)
    return f"{salt}${_hash(salt, code)}"


def recovery_code_matches(digest: str, code: str) -> bool:
    salt, _, expected = digest.partition("$")
    return hmac.compare_digest(_hash(salt, code), expected)
