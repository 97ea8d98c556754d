"""What a token is, shared by services (which issue and revoke) and selectors (which look up).

Kept apart so that neither of the two imports the other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings


def token_digest(raw: str) -> str:
    """Tokens carry 256 bits of randomness, so a fast hash is enough to store them safely."""
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class TokenFacts:
    """What authentication needs to know about a token, cacheable without the user row."""

    token_id: int
    user_id: int
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime

    def usable(self, now: datetime) -> bool:
        return self.expires_at > now and self.last_used_at + settings.TOKEN_IDLE_TIMEOUT > now
