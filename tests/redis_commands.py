"""Counting the Redis commands a piece of code sends, from the server's own statistics."""

from __future__ import annotations

from django.core.cache import caches


def ratelimit_redis():
    """The redis-py client behind the rate-limit cache (errors surface there)."""
    return caches["ratelimit"].client.get_client(write=True)


def command_calls(client) -> dict[str, int]:
    """Calls per command name so far, from INFO commandstats."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands sent between two ``command_calls`` readings (INFO itself left out)."""
    changed = {name: n - before.get(name, 0) for name, n in after.items()}
    return {name: n for name, n in changed.items() if n and name != "info"}
