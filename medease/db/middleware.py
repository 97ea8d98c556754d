"""Read-your-writes across requests, a primary retry for reads a replica failed, diagnostics."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connections

from medease import context
from medease.db.replicas import replica_aliases
from medease.db.state import RECENT_WRITE_COOKIE, remember_recent_write

logger = logging.getLogger("medease.db")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DIAGNOSTICS_HEADER = "X-DB-Queries"
DIAGNOSTICS_SELECTS_HEADER = "X-DB-Selects"
DIAGNOSTICS_RECOVERY_HEADER = "X-DB-Recovery"

# Requests under these paths read only the primary. Authentication decides on the current
# password, active flag and tokens, never on a replica's older copy (a password changed or
# an account disabled a moment ago), and a login usually follows a sign-up made a moment
# earlier by a client that has no token yet to be recognised by.
PRIMARY_PATH_PREFIXES = ("/api/v1/auth/", "/admin/login/")


class ReadYourWritesMiddleware:
    """Pins a request to the primary when its user wrote recently, and records new writes.

    API clients are recognised by user id (after token authentication, see
    accounts.authentication); browsers also get a short-lived cookie, which covers the
    admin's post-redirect-get before the session user is loaded.

    A safe request that failed because a replica went away is run once more on the
    primary. With ``DB_ROUTING_DIAGNOSTICS`` (tests, never production) the response says
    how many queries and SELECTs ran on each alias, and whether that connection was a
    server in recovery (``pg_is_in_recovery()`` on the very connection the router used).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        state = context.current_state()
        if state is not None and (
            request.COOKIES.get(RECENT_WRITE_COOKIE)
            or request.path.startswith(PRIMARY_PATH_PREFIXES)
        ):
            state.use_primary = True
        response = self.get_response(request)
        if (
            state is not None
            and state.extra.get("replica_error")
            and request.method in SAFE_METHODS
            and not state.wrote
            and response.status_code >= 500
            and not response.streaming
        ):
            logger.warning(
                "replica %s failed during a %s: answering it from the primary",
                state.extra["replica_error"],
                request.method,
            )
            state.extra.pop("replica_error")
            state.use_primary = True
            response = self.get_response(request)
            response["X-DB-Retried"] = "primary"
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
        if settings.DB_ROUTING_DIAGNOSTICS and state is not None:
            _add_diagnostics(response, state)
        return response


def _add_diagnostics(response, state) -> None:
    counts = dict(state.extra.get("db_queries", {}))
    selects = dict(state.extra.get("db_selects", {}))
    response[DIAGNOSTICS_HEADER] = ",".join(f"{a}={n}" for a, n in sorted(counts.items()))
    response[DIAGNOSTICS_SELECTS_HEADER] = ",".join(f"{a}={n}" for a, n in sorted(selects.items()))
    recovery = []
    for alias in sorted(counts):
        wrapper = connections[alias]
        if wrapper.vendor != "postgresql" or wrapper.connection is None:
            continue
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT pg_is_in_recovery()")
                recovery.append(f"{alias}={'t' if cursor.fetchone()[0] else 'f'}")
        except Exception:  # Diagnostics only; the answer itself is already decided.
            recovery.append(f"{alias}=?")
    response[DIAGNOSTICS_RECOVERY_HEADER] = ",".join(recovery)
