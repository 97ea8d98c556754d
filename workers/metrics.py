"""The outbox's state for /metrics, read from the database at scrape time.

Counters (medease.metrics) live in the process that delivers, usually a Celery worker that
nobody scrapes; the outbox table is the one place that knows about every process. So the
web process exports how many rows are in each status (``failed`` is the alert) and how
long the oldest due row has been waiting (a stalled worker or broker shows up here).
"""

from __future__ import annotations

import logging

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

logger = logging.getLogger("medease.notifications")


class OutboxCollector(Collector):
    """Gauges from two small aggregate queries (both served by partial or status indexes)."""

    def describe(self):
        # Lets the registry know the names without querying the database at start-up.
        yield GaugeMetricFamily("medease_notifications", "", labels=["status"])
        yield GaugeMetricFamily("medease_notifications_oldest_due_seconds", "")

    def collect(self):
        from workers.models import Notification, NotificationStatus

        try:
            counts = dict(
                Notification.objects.order_by()
                .values_list("status")
                .annotate(count=Count("id"))
                .values_list("status", "count")
            )
            oldest = Notification.objects.filter(
                status=NotificationStatus.PENDING, next_attempt_at__lte=timezone.now()
            ).aggregate(oldest=Min("next_attempt_at"))["oldest"]
        except Exception:  # A scrape must not fail because the database is unreachable.
            logger.warning("outbox metrics unavailable", exc_info=True)
            return
        by_status = GaugeMetricFamily(
            "medease_notifications",
            "Notification outbox rows by status (from the database).",
            labels=["status"],
        )
        for status in NotificationStatus.values:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        lag = (timezone.now() - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily(
            "medease_notifications_oldest_due_seconds",
            "How long the oldest due pending notification has been waiting.",
            value=max(0.0, lag),
        )


_collector: OutboxCollector | None = None


def register() -> None:
    """Register once per process (AppConfig.ready may run more than once in tests)."""
    global _collector
    if _collector is None:
        _collector = OutboxCollector()
        REGISTRY.register(_collector)
