"""The web process's websocket protocol: uvicorn's sans-I/O one, keepalive pings in batches.

uvicorn pings every socket ``--ws-ping-interval`` seconds after its last ping, each on a
timer of its own. Sockets open at scattered moments, so with 5,000 of them the event loop
woke 250 times a second for one ping each (and again for each pong): waking up, not the
ping, was most of the cost. 5,000 quiet sockets took 4.7% of a core, where the same sockets
opened within three seconds, their pings falling due together, took about 1%.

Here each ping falls due at the end of a slot of :data:`PING_SLOT_SECONDS` on the loop's
clock, so the pings due in one slot leave in one pass of the loop and their pongs come back
together: a ping is at most one slot late, never early, and at most a slot's share of the
sockets is pinged at once.

Served by the Procfile's web command (``--ws medease.keepalive:BatchedKeepaliveProtocol``).
Imports no Django: the benchmark's bare relay is served by the same command.
"""

from __future__ import annotations

import math

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

PING_SLOT_SECONDS = 0.25


def ping_due(now: float, interval: float, last_rtt: float) -> float:
    """When the next ping is due: uvicorn's delay, rounded up to the end of its slot."""
    due = now + max(0.0, interval - last_rtt)
    return math.ceil(due / PING_SLOT_SECONDS) * PING_SLOT_SECONDS


class BatchedKeepaliveProtocol(WebSocketsSansIOProtocol):
    def schedule_ping(self) -> None:
        assert self.ping_interval is not None
        due = ping_due(self.loop.time(), self.ping_interval, self.last_ping_rtt)
        self.ping_timer = self.loop.call_at(due, self.send_keepalive_ping)
