"""The outbox kick's worker side: notification ids pushed by requests become delivery tasks.

A request that records a notification LPUSHes its id onto a plain Redis list on the broker
(``workers.services.outbox.kick_delivery``) instead of publishing a Celery message: one
command instead of kombu's publish, about a tenth of a booking's CPU. Every Celery worker
runs one dispatcher thread (started when the worker is ready, stopped when it shuts down)
that pops those ids and enqueues ``workers.deliver_notification`` for each, so a real
worker still delivers within moments, with the task's claim, retries and time limits.

Nothing is lost when this fails: the kick is a hint. An id popped by a worker that is then
killed before it published, or pushed while Redis was down, belongs to a committed
``pending`` row, which the outbox sweeper enqueues NOTIFICATION_RENUDGE_SECONDS after its
``nudged_at``. Two dispatchers (two workers) never pop the same id; an id kicked twice is
delivered once (the delivery claims the row).
"""

from __future__ import annotations

import logging
import threading

import redis
from celery.signals import worker_ready, worker_shutdown

from medease import db as db_routing
from workers.services.outbox import enqueue_delivery, kick_location

logger = logging.getLogger("medease.notifications")

# Ids enqueued per round trip at most, and how long one BRPOP waits (the thread checks for
# shutdown between waits).
BATCH = 100
BLOCK_SECONDS = 1.0
# After a Redis error, wait this long before trying again.
ERROR_PAUSE_SECONDS = 2.0


def dispatch_once(client, key: str, *, block: float = BLOCK_SECONDS) -> int:
    """Wait up to ``block`` seconds for kicked ids, enqueue a delivery for each; how many."""
    first = client.brpop([key], timeout=block)
    if first is None:
        return 0
    ids = [first[1], *(client.rpop(key, BATCH - 1) or [])]
    # Every kick follows a commit: tag the tasks for the primary (medease.celery_routing),
    # as a publish from the request that wrote would have been.
    with db_routing.use_primary():
        for raw in ids:
            try:
                notification_id = int(raw)
            except (TypeError, ValueError):
                logger.warning("outbox kick: ignoring %r", raw)
                continue
            enqueue_delivery(notification_id)
    return len(ids)


class Dispatcher:
    """One thread popping kicked ids from the broker's Redis until ``stop()``."""

    def __init__(self, app) -> None:
        self.app = app
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start the thread; False when there is nothing to watch (eager tasks, not Redis)."""
        location = kick_location(self.app)
        if location is None:
            return False
        url, key = location
        # A client of its own: its reads block up to BLOCK_SECONDS, past the kicks' timeout.
        client = redis.Redis.from_url(
            url, socket_timeout=BLOCK_SECONDS + 5, socket_connect_timeout=5
        )
        self._thread = threading.Thread(
            target=self._run, args=(client, key), name="outbox-dispatcher", daemon=True
        )
        self._thread.start()
        logger.info("outbox dispatcher watching %s", key)
        return True

    def stop(self, timeout: float = BLOCK_SECONDS + 1) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self, client, key: str) -> None:
        while not self._stop.is_set():
            try:
                dispatch_once(client, key)
            except Exception:  # Redis or the broker is down: the sweeper covers meanwhile.
                logger.warning("outbox dispatcher: retrying after an error", exc_info=True)
                self._stop.wait(ERROR_PAUSE_SECONDS)


_dispatcher: Dispatcher | None = None


@worker_ready.connect(dispatch_uid="workers.dispatch.start")
def _start(sender=None, **kwargs) -> None:
    global _dispatcher
    app = getattr(sender, "app", None)
    if app is None or _dispatcher is not None:
        return
    dispatcher = Dispatcher(app)
    if dispatcher.start():
        _dispatcher = dispatcher


@worker_shutdown.connect(dispatch_uid="workers.dispatch.stop")
def _stop(**kwargs) -> None:
    global _dispatcher
    if _dispatcher is not None:
        _dispatcher.stop()
        _dispatcher = None
