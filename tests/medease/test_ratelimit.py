"""Rate-limit counters in Redis: one round trip per counted event, fixed windows, 429s."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from medease import ratelimit
from medease.exceptions import RateLimited
from tests.redis_commands import command_calls, command_delta, ratelimit_redis

pytestmark = pytest.mark.redis


def _request(ip: str = "198.51.100.7"):
    return RequestFactory().get("/api/v1/me", REMOTE_ADDR=ip)


def test_the_limit_answers_429_with_retry_after_within_the_window(settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "login_ip": ("3/15m", False)}
    request = _request()
    for _ in range(3):
        ratelimit.hit(request, name="login_ip", key=ratelimit.by_ip)
    with pytest.raises(RateLimited) as refused:
        ratelimit.hit(request, name="login_ip", key=ratelimit.by_ip)
    assert 0 <= refused.value.retry_after <= 15 * 60
    # check() does not count, and sees the limit used up; another address is untouched.
    with pytest.raises(RateLimited):
        ratelimit.check(request, name="login_ip", key=ratelimit.by_ip)
    ratelimit.check(_request("198.51.100.8"), name="login_ip", key=ratelimit.by_ip)


def test_a_counted_event_is_one_round_trip_and_sets_the_expiry(settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "register_ip": ("5/h", False)}
    client = ratelimit_redis()
    request = _request("203.0.113.9")
    before = command_calls(client)
    ratelimit.hit(request, name="register_ip", key=ratelimit.by_ip)
    first = command_delta(before, command_calls(client))
    # EVALSHA (or EVAL when the script was not loaded yet: then a NOSCRIPT EVALSHA, a
    # SCRIPT LOAD and the retry) with its INCRBY and PEXPIRE inside: no SET NX, no GET.
    assert first.get("incrby") == 1 and first.get("pexpire") == 1, first
    assert not {"set", "get", "setnx", "incr"} & set(first), first
    before = command_calls(client)
    ratelimit.hit(request, name="register_ip", key=ratelimit.by_ip)
    second = command_delta(before, command_calls(client))
    assert second == {"evalsha": 1, "incrby": 1}, second  # the expiry is set once
    keys = [key for key in client.scan_iter(match="*rl:*")]
    assert len(keys) == 1
    assert int(client.get(keys[0])) == 2
    assert 0 < client.pttl(keys[0]) <= (60 * 60 + 5) * 1000


def test_counters_are_shared_by_every_client_of_the_redis(settings):
    """Two nodes are two Redis clients of one server: they count into the same window."""
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "message_user": ("4/10s", True)}
    request = _request("192.0.2.10")
    ratelimit.hit(request, name="message_user", key=ratelimit.by_ip)
    ratelimit.hit(request, name="message_user", key=ratelimit.by_ip)
    # A second node: its own connection pool and client on the same server.
    first_node = ratelimit_redis()
    # Another connection pool and client to the same server (a URL of its own).
    location = settings.CACHES["ratelimit"]["LOCATION"]
    separator = "&" if "?" in location else "?"
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            **settings.CACHES["ratelimit"],
            "LOCATION": f"{location}{separator}health_check_interval=0",
        },
    }
    assert ratelimit_redis().connection_pool is not first_node.connection_pool
    ratelimit.hit(request, name="message_user", key=ratelimit.by_ip)
    ratelimit.hit(request, name="message_user", key=ratelimit.by_ip)
    with pytest.raises(RateLimited):
        ratelimit.hit(request, name="message_user", key=ratelimit.by_ip)


def test_windows_are_fixed_per_key_and_end_within_one_period():
    # The same key always ends its windows at the same offset; the end is never past now
    # + period, and a new window starts once the old one ended.
    ends = {ratelimit._window_end("user-1", 60, now) for now in range(1_000_020, 1_000_080)}
    assert len(ends) <= 2
    for now in range(1_000_000, 1_000_200):
        end = ratelimit._window_end("user-1", 60, now)
        assert now <= end <= now + 60
    assert ratelimit._window_end("x", 1, 1_000_000) == 1_000_000


def test_rates_parse_like_before():
    assert ratelimit._split_rate("10/15m") == (10, 900)
    assert ratelimit._split_rate("1200/m") == (1200, 60)
    assert ratelimit._split_rate("20/10s") == (20, 10)
    assert ratelimit._split_rate("5/") == (5, 1)
    with pytest.raises(ValueError):
        ratelimit._split_rate("ten per minute")


async def test_the_event_loop_counts_into_the_same_counter(settings):
    """ahit (a chat socket's send, on the event loop) is hit: the same key, script and
    limit, so sends over REST and over the socket share one budget; it loads the script
    into a Redis that does not have it."""
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "message_user": ("3/10s", True)}
    request = _request("192.0.2.44")
    ratelimit_redis().script_flush()
    await ratelimit.ahit(request, name="message_user", key=ratelimit.by_ip)
    ratelimit.hit(request, name="message_user", key=ratelimit.by_ip)
    await ratelimit.ahit(request, name="message_user", key=ratelimit.by_ip)
    with pytest.raises(RateLimited) as refused:
        await ratelimit.ahit(request, name="message_user", key=ratelimit.by_ip)
    assert 0 <= refused.value.retry_after <= 10
    with pytest.raises(RateLimited):
        ratelimit.hit(request, name="message_user", key=ratelimit.by_ip)


async def test_the_event_loop_fails_open_or_closed_as_the_limit_says(settings):
    """A Redis that cannot be reached: a fail-open limit lets the send through, a
    fail-closed one answers 503 (ServiceUnavailable), as hit does."""
    from medease.exceptions import ServiceUnavailable

    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {**settings.CACHES["ratelimit"], "LOCATION": dead},
    }
    request = _request("192.0.2.45")
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "message_user": ("1/10s", True)}
    for _ in range(3):  # over the limit, but nothing can count: through
        await ratelimit.ahit(request, name="message_user", key=ratelimit.by_ip)
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "message_user": ("1/10s", False)}
    with pytest.raises(ServiceUnavailable):
        await ratelimit.ahit(request, name="message_user", key=ratelimit.by_ip)
