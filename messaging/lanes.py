"""Where a websocket send's one statement runs: lanes on the event loop.

A chat socket's usual send (services.amessage_send_at_once) is one statement and two Redis
round trips. Run through a thread it cost more in hand-offs (a future chained each way,
the GIL handed back and forth) than in its own work, so it runs on the event loop with
psycopg's asyncio connection instead. Each process has SEND_LANES lanes per event loop;
a consultation's sends take lane ``id % SEND_LANES`` and hold it, in arrival order (an
asyncio lock is first come, first served), from the statement until the fan-out is
published: sends of one consultation are stored and published one at a time, in id
order, while sends of different consultations overlap. A lane keeps its one connection
(autocommit) from send to send, so psycopg prepares the send's statement on it after a
few executions and PostgreSQL stops planning it each time (planning the statement, with
its five parts, cost more than running it); one that fails is closed, and the next send
opens another.

PostgreSQL only: the embedded default (SQLite) sends through the database thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import AsyncIterator

import psycopg
from django.conf import settings
from django.db import router

SEND_LANES = 4
# Django's own OPTIONS, not libpq parameters.
_DJANGO_OPTIONS = {"pool", "isolation_level", "assume_role", "server_side_binding", "context"}


class _Lane:
    __slots__ = ("connection", "lock")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.connection: psycopg.AsyncConnection | None = None


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Lane]] = (
    weakref.WeakKeyDictionary()
)
_opened: list[_Lane] = []  # every lane that has a connection (for close_all)


@functools.cache
def _alias() -> str:
    from messaging.models import Message

    return router.db_for_write(Message)


def available() -> bool:
    """Whether sends can take a lane: the messages live in PostgreSQL."""
    return settings.DATABASES[_alias()]["ENGINE"].endswith("postgresql")


def _conninfo() -> str:
    # From the settings, not Django's connection object: touching that on the event loop
    # would make one per task context (per socket).
    config = settings.DATABASES[_alias()]
    options = {k: v for k, v in config.get("OPTIONS", {}).items() if k not in _DJANGO_OPTIONS}
    return psycopg.conninfo.make_conninfo(
        dbname=config["NAME"],
        user=config.get("USER") or None,
        password=config.get("PASSWORD") or None,
        host=config.get("HOST") or None,
        port=config.get("PORT") or None,
        **options,
    )


def _prepare_threshold() -> int | None:
    # Behind PgBouncer in transaction mode (the setting that says so also turns named
    # cursors off) a prepared statement may land on another server connection: not there.
    if settings.DATABASES[_alias()].get("DISABLE_SERVER_SIDE_CURSORS"):
        return None
    return 5  # psycopg's default: prepared from the fifth execution on


@contextlib.asynccontextmanager
async def lane(consultation_id: int) -> AsyncIterator[psycopg.AsyncConnection]:
    """Hold the consultation's lane; yields its connection (opened if need be)."""
    loop = asyncio.get_running_loop()
    lanes = _by_loop.get(loop)
    if lanes is None:
        lanes = _by_loop[loop] = [_Lane() for _ in range(SEND_LANES)]
    held = lanes[consultation_id % SEND_LANES]
    async with held.lock:
        if held.connection is None or held.connection.closed:
            held.connection = await psycopg.AsyncConnection.connect(
                _conninfo(), autocommit=True, prepare_threshold=_prepare_threshold()
            )
            _opened.append(held)
        try:
            yield held.connection
        except psycopg.OperationalError:
            # The connection (or the server) went away: the next send opens another.
            with contextlib.suppress(Exception):
                await held.connection.close()
            raise


def close_all() -> None:
    """Close every lane's connection, from any thread, whether or not its event loop still
    runs (a test database about to be flushed or dropped, a process shutting down)."""
    while _opened:
        held = _opened.pop()
        if held.connection is not None:
            with contextlib.suppress(Exception):
                held.connection.pgconn.finish()
            held.connection = None
