"""Failed-password limits, shared by every place a password is checked.

The API login, the staff console's login and the password change all count failures in
the same Redis counters (``login_account`` per normalized email, ``login_ip`` per client
address), so guesses spread across them still reach the one lockout.
"""

from __future__ import annotations

from accounts.services import normalize_email
from medease import ratelimit


def _by_account(email: str) -> ratelimit.KeyFunc:
    account = normalize_email(email)
    return lambda group, request: account


def password_attempt_check(request, *, email: str) -> None:
    """Raise RateLimited while the account or the address is locked out (counts nothing).

    Checked before the password, so the right password is refused too while locked.
    """
    ratelimit.check(request, name="login_ip", key=ratelimit.by_ip)
    ratelimit.check(request, name="login_account", key=_by_account(email))


def password_attempt_failed(request, *, email: str) -> None:
    """Count one wrong password against the account and the address."""
    ratelimit.count(request, name="login_ip", key=ratelimit.by_ip)
    ratelimit.count(request, name="login_account", key=_by_account(email))
