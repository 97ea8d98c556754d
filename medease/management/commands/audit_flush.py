"""Move audit events from the Redis Stream into PostgreSQL (the Procfile's ``audit``).

Runs until SIGTERM or SIGINT, finishing the batch in hand. ``--once`` drains what is
there now and exits. See docs/adr/0007-audit-write-path.md.
"""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from medease.audit_stream import Flusher, default_consumer_name


class Command(BaseCommand):
    help = "Write audit events queued in the Redis Stream to the database, in batches."

    def add_arguments(self, parser):
        parser.add_argument(
            "--consumer",
            default="",
            help="Consumer name in the stream's group (default: AUDIT_FLUSH_CONSUMER or host).",
        )
        parser.add_argument(
            "--once", action="store_true", help="Drain what is queued now, then exit."
        )

    def handle(self, *args, consumer: str, once: bool, **options):
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        if not settings.AUDIT_REDIS_URL:
            if once:
                raise CommandError("No audit stream: AUDIT_REDIS_URL is not set.")
            # Without a stream audit rows are written synchronously; the process idles so
            # that one Procfile serves both setups.
            self.stdout.write("audit flush: no AUDIT_REDIS_URL, rows are written synchronously")
            stop.wait()
            return
        flusher = Flusher(consumer=consumer or default_consumer_name())
        if once:
            written = flusher.drain()
            self.stdout.write(f"{written} audit events written")
            return
        self.stdout.write(f"audit flush: consumer {flusher.consumer} on {flusher.key}")
        flusher.run(stop)
