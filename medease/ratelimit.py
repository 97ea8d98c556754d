"""Rate limits kept in the shared cache (Redis in production), so they hold across nodes.

Each limit is named in ``settings.RATE_LIMITS`` as ``(rate, fail_open)``. When the cache
cannot be reached a fail-open limit lets the request through and a fail-closed one answers
503 (see docs/adr/0003-rate-limits.md for which is which and why).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
from collections.abc import Callable

from django.conf import settings
from django_ratelimit.core import get_usage
from rest_framework.throttling import BaseThrottle

from medease.exceptions import RateLimited, ServiceUnavailable

logger = logging.getLogger("medease.ratelimit")

KeyFunc = Callable[[str, object], str]
_UNAVAILABLE = "This action is temporarily unavailable (rate limiting is down). Try again shortly."


@functools.lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _trusted(address: str, networks: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(request) -> str:
    """The client address: the one function rate limits, audit rows and sockets use.

    ``X-Forwarded-For`` is believed only when the direct peer is in TRUSTED_PROXIES; then
    the client is the right-most hop that is not itself a trusted proxy (hops to its left
    were written by the client and prove nothing).
    """
    peer = request.META.get("REMOTE_ADDR") or "unknown"
    networks = _networks(tuple(settings.TRUSTED_PROXIES))
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            # A malformed hop where a proxy should have written an address: trust nothing.
            return hop if _is_ip(hop) else peer
    # Every hop is a trusted proxy (an internal client): the left-most one is closest to it.
    return hops[0] if hops else peer


def _usage(request, *, name: str, key: KeyFunc, increment: bool):
    rate, fail_open = settings.RATE_LIMITS[name]
    try:
        usage = get_usage(request, group=name, key=key, rate=rate, increment=increment)
    except Exception as exc:  # Redis down or timing out: decide per limit.
        if fail_open:
            logger.warning("rate limit %s skipped, cache unavailable: %s", name, exc)
            return None
        logger.error("rate limit %s failed closed, cache unavailable: %s", name, exc)
        raise ServiceUnavailable(_UNAVAILABLE) from exc
    if usage is not None and usage["time_left"] < 0 and usage["limit"] == 0:
        # django-ratelimit's own "cache failed" answer (it swallows some errors itself).
        if fail_open:
            return None
        raise ServiceUnavailable(_UNAVAILABLE)
    return usage


def check(request, *, name: str, key: KeyFunc) -> None:
    """Raise RateLimited if the limit is already used up (without counting this call)."""
    usage = _usage(request, name=name, key=key, increment=False)
    if usage and usage["count"] >= usage["limit"]:
        raise RateLimited(retry_after=usage["time_left"])


def hit(request, *, name: str, key: KeyFunc) -> None:
    """Count one event against the limit; raise RateLimited if that goes over it."""
    usage = _usage(request, name=name, key=key, increment=True)
    if usage and usage["should_limit"]:
        raise RateLimited(retry_after=usage["time_left"])


def count(request, *, name: str, key: KeyFunc) -> None:
    """Count one event without raising (e.g. a failed login after the answer is decided)."""
    with contextlib.suppress(ServiceUnavailable):
        _usage(request, name=name, key=key, increment=True)


def by_ip(group: str, request) -> str:
    return client_ip(request)


def by_user(group: str, request) -> str:
    return str(request.user.pk)


class ApiUserThrottle(BaseThrottle):
    """DRF throttle: the general per-user API budget (``RATE_LIMITS["api_user"]``)."""

    def allow_request(self, request, view):
        if not request.user or not request.user.is_authenticated:
            return True
        hit(request, name="api_user", key=by_user)
        return True
